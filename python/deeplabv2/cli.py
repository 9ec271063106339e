"""The `deeplabv2` command: train | evaluate | predict | demo | benchmark | env.

Settings come from a config file (a path, or a shipped name: voc, cityscapes, demo) and
`--set section.key=value` overrides; `deeplabv2 <command> --help` explains every option.
Multi-GPU / multi-node training: `torchrun --nproc_per_node=8 -m deeplabv2 train --config voc ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from deeplabv2.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from deeplabv2.metrics import SegmentationScores

DEMO_TIME_LIMIT_S = 300.0


def _add_config_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--config",
        default=default,
        help=f"config file, or a shipped config name: voc, cityscapes, demo (default: {default})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, YAML syntax (repeatable), e.g. --set train.iterations=100 "
        "--set model.rates=[2,4,8,12] --set data.root=/data/VOC2012",
    )
    parser.add_argument(
        "--device",
        help="cpu, cuda or cuda:N (default: the config's train.device, 'auto' = CUDA if present)",
    )


def _quoted(value: object) -> str:
    """A path as a YAML string scalar, so that `--weights 1e3.pt`, `on` or `a: b` stay strings."""
    return json.dumps(str(value))


def _scores_json(scores: SegmentationScores) -> dict:
    """The scores as a dict with NaN (a class absent everywhere) as null, valid JSON."""
    def plain(value: object) -> object:
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return None if isinstance(value, float) and math.isnan(value) else value

    return {key: plain(value) for key, value in dataclasses.asdict(scores).items()}


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    overrides = list(args.overrides) + list(extra)
    if args.device:
        overrides.append(f"train.device={args.device}")
    return load_config(args.config, overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplabv2",
        description="DeepLabV2 (ResNet-101, output stride 8, ASPP, MSC) with the fused ASPP "
        "and DenseCRF ops of deeplabv2_ext.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train (SGD, poly LR, checkpoints; use torchrun for several GPUs)",
        description="Iteration-based training as DeepLabV2: SGD momentum 0.9, poly LR, head LR "
        "x10/x20, cross-entropy over the MSC outputs. Writes checkpoints, logs and config.yaml to "
        "train.output_dir; only rank 0 writes under torchrun.",
    )
    _add_config_options(train, "voc")
    train.add_argument(
        "--resume",
        metavar="CHECKPOINT|auto",
        help="continue exactly from a checkpoint; 'auto' = OUTPUT_DIR/checkpoints/latest.pt if it "
        "exists",
    )
    train.add_argument("--output-dir", help="where checkpoints and logs go (train.output_dir)")

    evaluate = commands.add_parser(
        "evaluate",
        help="mIoU on the validation split, with and without DenseCRF",
        description="Confusion-matrix mIoU, pixel accuracy, mean accuracy and per-class IoU on "
        "data.val_split; single- or multi-scale (eval.scales), optional flip, optional DenseCRF "
        "post-processing (crf.* settings) reported next to the plain result.",
    )
    _add_config_options(evaluate, "voc")
    evaluate.add_argument("--weights", help="model weights (model.weights); any supported layout")
    evaluate.add_argument(
        "--crf", action=argparse.BooleanOptionalAction, default=None,
        help="also evaluate with DenseCRF post-processing (eval.crf)",
    )
    evaluate.add_argument(
        "--scales", type=float, nargs="+", help="input scales whose predictions are averaged "
        "(eval.scales), e.g. 0.5 0.75 1.0 1.25",
    )
    evaluate.add_argument("--flip", action="store_true", help="also average mirrored inputs")
    evaluate.add_argument("--json", type=Path, help="also write the scores to this JSON file")

    predict = commands.add_parser(
        "predict",
        help="segment images: palette PNG masks and overlays",
        description="Writes <stem>_mask.png (class ids as a palette PNG) and <stem>_overlay.png "
        "for every IMAGE.",
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--weights", required=True, help="model weights; any supported layout")
    predict.add_argument("--crf", action="store_true", help="refine with DenseCRF (crf.*)")
    predict.add_argument(
        "--output-dir", type=Path, default=Path("predictions"),
        help="where the PNGs go (default: ./predictions)",
    )
    _add_config_options(predict, "voc")

    demo = commands.add_parser(
        "demo",
        help="train a small DeepLabV2 on synthetic shapes; mIoU with/without CRF; a PNG panel",
        description="Needs no data and no weights: trains the `demo` config (small backbone, "
        "synthetic shapes) on the GPU if there is one, else the CPU; evaluates without and with "
        "DenseCRF; prints a report and writes OUTPUT_DIR/demo_panel.png "
        "(image | ground truth | prediction | CRF-refined).",
    )
    _add_config_options(demo, "demo")
    demo.add_argument("--output-dir", help="where the run goes (default: the config's, runs/demo)")
    demo.add_argument("--iterations", type=int, help="training iterations (train.iterations)")
    demo.add_argument(
        "--check", action="store_true",
        help=f"exit with status 1 unless the CRF raised mIoU and the demo took at most "
        f"{DEMO_TIME_LIMIT_S:.0f} s (what CI runs)",
    )

    benchmark = commands.add_parser(
        "benchmark",
        help="time the whole model: fused ASPP vs nn.Conv2d ASPP, training step and inference",
        description="Median time of a training step (forward, loss, backward, SGD step) and of "
        "inference for DeepLabV2 with the fused ASPP head and with the nn.Conv2d head, same "
        "weights, same run; prints the ratios.",
    )
    benchmark.add_argument("--backbone", default="resnet101", help="resnet101 | resnet50 | small")
    benchmark.add_argument("--size", type=int, default=513, help="input height = width (513)")
    benchmark.add_argument("--batch", type=int, default=1, help="batch size (1)")
    benchmark.add_argument("--num-classes", type=int, default=21, help="classes (21)")
    benchmark.add_argument(
        "--rates", type=int, nargs="+", default=[6, 12, 18, 24], help="ASPP rates (6 12 18 24)"
    )
    benchmark.add_argument(
        "--msc-scales", type=float, nargs="+", default=[1.0],
        help="multi-scale inputs, e.g. 1 0.75 0.5 (default: 1 = single scale)",
    )
    benchmark.add_argument(
        "--dtype", default="bf16", choices=["fp32", "bf16", "fp16"], help="autocast dtype (bf16)"
    )
    benchmark.add_argument("--repeats", type=int, default=10, help="timed runs (10)")
    benchmark.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (3)")
    benchmark.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    benchmark.add_argument("--json", type=Path, help="also write the results to this JSON file")

    commands.add_parser(
        "env",
        help="print what a bug report needs (= python -m deeplabv2_ext)",
        description="Versions of deeplabv2_ext, Python and torch, what deeplabv2_ext._C was "
        "built with (CUDA kernels and architectures), threads and CUDA devices.",
    )
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from deeplabv2.train import train

    extra = [f"train.output_dir={_quoted(args.output_dir)}"] if args.output_dir else []
    result = train(_config(args, extra), resume=args.resume)
    print(f"trained to iteration {result.iteration}; weights: {result.model_path}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from deeplabv2.data import build_val_dataset
    from deeplabv2.evaluate import evaluate
    from deeplabv2.models import build_model
    from deeplabv2.train import resolve_device

    extra = []
    if args.weights:
        extra.append(f"model.weights={_quoted(args.weights)}")
    if args.crf is not None:
        extra.append(f"eval.crf={str(args.crf).lower()}")
    if args.scales:
        extra.append(f"eval.scales={list(args.scales)}")
    if args.flip:
        extra.append("eval.flip=true")
    config = _config(args, extra)
    if config.model.weights is None:
        raise ConfigError("evaluate needs weights: --weights PATH (or model.weights in the config)")
    model = build_model(config.model)
    val_set = build_val_dataset(config.data)
    result = evaluate(
        model, val_set, config.eval, config.crf, config.model.preprocessing,
        resolve_device(config.train.device), config.data.num_workers, progress=True,
    )
    print(result.report(val_set.class_names))
    if args.json:
        scores = {"without_crf": _scores_json(result.scores)}
        if result.crf_scores is not None:
            scores["with_crf"] = _scores_json(result.crf_scores)
        args.json.write_text(json.dumps(scores, indent=2))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from deeplabv2.data import dataset_info
    from deeplabv2.models import build_model
    from deeplabv2.predict import predict_files
    from deeplabv2.train import resolve_device

    config = _config(args, [f"model.weights={_quoted(args.weights)}"])
    _, _, palette = dataset_info(config.data.dataset)
    model = build_model(config.model)
    written = predict_files(
        model, args.images, config, palette, args.output_dir,
        resolve_device(config.train.device), args.crf,
    )
    for prediction in written:
        print(f"{prediction.image}: {prediction.mask}, {prediction.overlay}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from deeplabv2.demo import run_demo
    from deeplabv2.data import dataset_info

    extra = []
    if args.output_dir:
        extra.append(f"train.output_dir={_quoted(args.output_dir)}")
    if args.iterations is not None:
        extra.append(f"train.iterations={args.iterations}")
    config = _config(args, extra)
    result = run_demo(config)
    _, class_names, _ = dataset_info(config.data.dataset)
    print()
    print(result.evaluation.report(class_names))
    print(
        f"training {result.train_seconds:.0f} s (final loss {result.final_loss:.3f}), "
        f"total {result.total_seconds:.0f} s; panel: {result.panel}"
    )
    if args.check:
        failures = []
        if result.evaluation.crf_scores is None:
            failures.append("eval.crf is false: there is no CRF result to check")
        elif result.crf_gain <= 0:
            failures.append(f"the CRF did not raise mIoU ({100 * result.crf_gain:+.2f} points)")
        if result.total_seconds > DEMO_TIME_LIMIT_S:
            failures.append(f"the demo took {result.total_seconds:.0f} s > {DEMO_TIME_LIMIT_S:.0f} s")
        for failure in failures:
            print(f"demo check FAILED: {failure}", file=sys.stderr)
        return 1 if failures else 0
    return 0


def _run_benchmark(args: argparse.Namespace) -> int:
    from deeplabv2.benchmark import BenchmarkSetup, as_json, run_benchmark, summary
    from deeplabv2.train import resolve_device

    setup = BenchmarkSetup(
        backbone=args.backbone, num_classes=args.num_classes, rates=tuple(args.rates),
        msc_scales=tuple(args.msc_scales), size=args.size, batch=args.batch, dtype=args.dtype,
        repeats=args.repeats, warmup=args.warmup,
    )
    device = resolve_device(args.device)
    timings = run_benchmark(setup, device)
    print(summary(timings))
    if args.json:
        args.json.write_text(json.dumps(as_json(setup, timings, device), indent=2))
    return 0


def _run_env(args: argparse.Namespace) -> int:
    from deeplabv2_ext.env import report

    print(report())
    return 0


COMMANDS = {
    "train": _run_train,
    "evaluate": _run_evaluate,
    "predict": _run_predict,
    "demo": _run_demo,
    "benchmark": _run_benchmark,
    "env": _run_env,
}


class _StderrHandler(logging.Handler):
    """Writes records to the current `sys.stderr` (looked up at each record, not kept)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_package_logs() -> None:
    """The package's INFO messages on stderr: e.g. what loading `model.weights` did (the load
    report, with the multi-scale resizing convention chosen and why)."""
    package = logging.getLogger("deeplabv2")
    package.setLevel(logging.INFO)
    if not any(isinstance(handler, _StderrHandler) for handler in package.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `deeplabv2` command; returns the exit status."""
    args = _parser().parse_args(argv)
    _show_package_logs()
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"deeplabv2 {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
