"""Config files and overrides: shipped configs load, typos and bad types are clear errors."""
import pytest

from deeplabv2.config import CONFIG_DIR, Config, CRFConfig, ConfigError, load_config, save_config


@pytest.mark.parametrize("name", ["voc", "cityscapes", "demo"])
def test_shipped_configs_load(name):
    config = load_config(name)
    assert isinstance(config, Config)
    assert (CONFIG_DIR / f"{name}.yaml").is_file()


def test_voc_config_is_the_paper_setting():
    config = load_config("voc")
    assert config.model.backbone == "resnet101" and config.model.rates == (6, 12, 18, 24)
    assert config.model.msc_scales == (1.0, 0.75, 0.5) and config.model.frozen_bn
    assert (config.train.iterations, config.train.batch_size, config.train.base_lr) == (20000, 10, 2.5e-4)
    assert (config.train.momentum, config.train.weight_decay, config.train.poly_power) == (0.9, 5e-4, 0.9)
    assert config.data.crop_size == 321 and config.data.scale_range == (0.5, 1.5)
    assert load_config("cityscapes").model.num_classes == 19
    crf = config.crf  # DeepLabV2's VOC CRF: bi_w 4, bi_xy_std 67, bi_rgb_std 3, pos_w 3, pos_xy_std 1
    assert (crf.iterations, crf.bilateral_weight, crf.bilateral_sxy, crf.bilateral_srgb) == (10, 4, 67, 3)
    assert (crf.gaussian_weight, crf.gaussian_sxy) == (3, 1)
    assert CRFConfig() == crf


def test_overrides_parse_yaml_values():
    config = load_config("voc", ["model.rates=[2,4,8,12]", "train.iterations=7", "model.weights=null",
                                 "train.base_lr=1e-3", "data.flip=false", "data.root=/data/VOC2012"])
    assert config.model.rates == (2, 4, 8, 12)
    assert config.train.iterations == 7 and config.train.base_lr == 1e-3
    assert config.model.weights is None and config.data.flip is False
    assert config.data.root == "/data/VOC2012"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.ratez=[1]", "unknown key"),
        ("modle.rates=[1]", "unknown section"),
        ("train.iterations=many", "expected an integer"),
        ("data.flip=1", "expected true or false"),
        ("data.scale_range=[0.5]", "expected 2 values"),
        ("train.iterations", "section.key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("voc", [override])


def test_file_roundtrip_and_errors(tmp_path):
    config = load_config("demo", ["train.iterations=3"])
    path = tmp_path / "run.yaml"
    save_config(config, path)
    assert load_config(str(path)) == config
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text("train:\n  iteratons: 5\n")
    with pytest.raises(ConfigError, match="train.iteratons"):
        load_config(str(tmp_path / "typo.yaml"))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_config("nope")


def test_resizing_and_checkpoint_keeping_settings():
    config = load_config("voc")
    assert config.model.msc_resizing is None  # the weights' layout's convention, else caffe
    assert config.train.keep_checkpoints == 3
    assert load_config("demo").train.keep_checkpoints is None  # the default: keep them all
    config = load_config("voc", ["model.msc_resizing=kazuto1011", "train.keep_checkpoints=null"])
    assert config.model.msc_resizing == "kazuto1011" and config.train.keep_checkpoints is None
    with pytest.raises(ConfigError, match="model.msc_resizing: expected a string"):
        load_config("voc", ["model.msc_resizing=[caffe]"])
    with pytest.raises(ConfigError, match="train.keep_checkpoints: expected an integer"):
        load_config("voc", ["train.keep_checkpoints=all"])
