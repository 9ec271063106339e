"""The `deeplabv2` command: help texts, errors, and real runs of every subcommand at tiny sizes."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deeplabv2.cli import main
from deeplabv2.config import load_config
from deeplabv2.models import build_model
from test_data import voc  # noqa: F401  (the tiny VOC folder fixture)

TINY = [
    "--set", "model.msc_scales=[1.0,0.5]",
    "--set", "data.synthetic_image_size=40",
    "--set", "data.crop_size=40",
    "--set", "data.synthetic_train_samples=16",
    "--set", "data.synthetic_val_samples=4",
    "--set", "eval.batch_size=4",
    "--set", "train.batch_size=2",
    "--set", "train.log_every=1",
    "--set", "train.checkpoint_every=2",
    "--set", "crf.iterations=2",
    "--device", "cpu",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "command, options",
    [
        ("train", ["--resume", "--set", "--config", "--output-dir", "torchrun"]),
        ("evaluate", ["--weights", "--crf", "--scales", "--flip", "--json"]),
        ("predict", ["IMAGE", "--weights", "--crf", "--output-dir"]),
        ("demo", ["--iterations", "--output-dir", "--check"]),
        ("benchmark", ["--backbone", "--size", "--batch", "--dtype", "--msc-scales", "--json"]),
    ],
)
def test_help_explains_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, f"`deeplabv2 {command} --help` does not mention {option}"


def test_module_and_console_script_entry_points():
    completed = subprocess.run([sys.executable, "-m", "deeplabv2", "--help"], capture_output=True,
                               text=True, check=True)
    assert "train" in completed.stdout and "benchmark" in completed.stdout
    script = shutil.which("deeplabv2")
    if script is not None:  # installed by `pip install .`
        assert "demo" in subprocess.run([script, "--help"], capture_output=True, text=True,
                                        check=True).stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--config", "demo"], "needs weights"),
        (["train", "--set", "train.iteratons=3"], "train.iteratons"),
        (["train", "--config", "voc", "--set", "data.root=/nonexistent/VOC2012"], "/nonexistent"),
        (["predict", "missing.jpg", "--weights", "missing.pt"], "missing"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"deeplabv2 {argv[0]}: error:") and message in error


def test_train_evaluate_predict_roundtrip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "demo", "--output-dir", str(run), "--set",
                 "train.iterations=2", *TINY]) == 0
    weights = run / "model.pt"
    assert weights.is_file() and (run / "checkpoints" / "latest.pt").is_file()
    assert main(["train", "--config", "demo", "--output-dir", str(run), "--resume", "auto",
                 "--set", "train.iterations=3", *TINY]) == 0
    assert "iteration 3" in capsys.readouterr().out

    scores_path = tmp_path / "scores.json"
    assert main(["evaluate", "--config", "demo", "--weights", str(weights), "--crf", "--json",
                 str(scores_path), *TINY]) == 0
    captured = capsys.readouterr()
    report = captured.out
    assert "mean IoU" in report and "with DenseCRF" in report
    # The load report, with the multi-scale resizing chosen and why (on stderr).
    assert (f"{weights}: deeplabv2 checkpoint:" in captured.err
            and "multi-scale resizing caffe (the default" in captured.err)
    def no_nan(constant):
        raise AssertionError(f"{scores_path} is not valid JSON: {constant}")

    scores = json.loads(scores_path.read_text(), parse_constant=no_nan)
    assert 0 <= scores["without_crf"]["mean_iou"] <= 1 and "with_crf" in scores

    image_path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(image_path)
    out = tmp_path / "predictions"
    assert main(["predict", str(image_path), "--weights", str(weights), "--crf", "--config", "demo",
                 "--output-dir", str(out), *TINY]) == 0
    with Image.open(out / "photo_mask.png") as mask:
        assert mask.mode == "P" and mask.size == (44, 30)
        assert np.asarray(mask).max() < load_config("demo").model.num_classes
    with Image.open(out / "photo_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (44, 30)


def test_predict_uses_the_weights(tmp_path):
    """Two different weight files give different masks: the weights really are loaded."""
    config = load_config("demo", ["model.msc_scales=[1.0]"])
    image_path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(image_path)
    masks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(config.model)
        with torch.no_grad():
            model.aspp.bias.normal_(0, 5)  # dominant per-class offsets
        torch.save(model.state_dict(), tmp_path / f"w{seed}.pt")
        out = tmp_path / f"out{seed}"
        assert main(["predict", str(image_path), "--weights", str(tmp_path / f"w{seed}.pt"),
                     "--config", "demo", "--set", "model.msc_scales=[1.0]", "--output-dir", str(out),
                     "--device", "cpu"]) == 0
        masks.append(np.asarray(Image.open(out / "photo_mask.png")))
    assert not np.array_equal(masks[0], masks[1])


def test_demo_runs_and_writes_the_panel(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--iterations", "2", *TINY]) == 0
    output = capsys.readouterr().out
    assert "without CRF" in output and "with DenseCRF" in output and "panel" in output
    with Image.open(tmp_path / "demo_panel.png") as panel:
        assert panel.size[0] > 4 * 40


def test_benchmark_times_both_heads(tmp_path, capsys):
    result_path = tmp_path / "bench.json"
    assert main(["benchmark", "--backbone", "small", "--size", "33", "--rates", "2", "4",
                 "--num-classes", "3", "--dtype", "fp32", "--repeats", "2", "--warmup", "1",
                 "--device", "cpu", "--json", str(result_path)]) == 0
    assert "nn.Conv2d / fused" in capsys.readouterr().out
    result = json.loads(result_path.read_text())
    heads = {(timing["head"], timing["mode"]) for timing in result["timings"]}
    assert heads == {(head, mode) for head in ("fused ASPP", "nn.Conv2d ASPP")
                     for mode in ("train step", "inference")}
    assert all(len(timing["runs_ms"]) == 2 and timing["median_ms"] > 0 for timing in result["timings"])
    assert result["environment"]["torch"] == torch.__version__


def test_voc_train_and_evaluate_on_a_tiny_voc_folder(voc, tmp_path, capsys):
    """The shipped VOC config end to end (small backbone) on a VOC-shaped folder: trainaug
    training, then evaluation of images of different sizes with and without the CRF."""
    root, _ = voc
    small = ["--set", f"data.root={root}", "--set", "model.backbone=small", "--set",
             "model.msc_scales=[1.0,0.75]", "--set", "data.crop_size=33", "--set",
             "data.num_workers=0", "--set", "crf.iterations=2", "--device", "cpu"]
    run = tmp_path / "voc_run"
    assert main(["train", "--config", "voc", "--output-dir", str(run), "--set", "train.iterations=2",
                 "--set", "train.batch_size=2", *small]) == 0
    assert main(["evaluate", "--config", "voc", "--weights", str(run / "model.pt"), *small]) == 0
    report = capsys.readouterr().out
    assert "aeroplane" in report and "with DenseCRF" in report  # voc.yaml evaluates with the CRF
    assert "(2 images" in report  # val.txt lists two images of different sizes (batch 1)
