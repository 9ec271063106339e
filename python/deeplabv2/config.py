"""Run configuration: typed dataclasses, loaded from YAML files and `section.key=value` overrides.

A config file holds any subset of the sections below; every key it names must exist (a typo is an
error naming the key, never a silently ignored setting). The files shipped with the package are
in `deeplabv2/configs/` (`voc.yaml`, `cityscapes.yaml`, `demo.yaml`); `load_config("voc")` finds
them by name.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class ModelConfig:
    """The network: backbone, head, multi-scale inputs, weights and the matching preprocessing."""

    backbone: str = "resnet101"  # resnet101 | resnet50 | small
    num_classes: int = 21
    rates: tuple[int, ...] = (6, 12, 18, 24)  # ASPP-L; ASPP-S is (2, 4, 8, 12)
    msc_scales: tuple[float, ...] = (1.0, 0.75, 0.5)  # () or (1.0,): no multi-scale inputs
    # How inputs and logits are resized per scale (MSC, eval scales, upsampling to the image), as
    # a reference did: caffe | kazuto1011 | isht7. null: the weights' layout's (kazuto1011,
    # isht7), else caffe.
    msc_resizing: str | None = None
    frozen_bn: bool = True
    fused_aspp: bool = True  # False: the reference head of R nn.Conv2d summed
    weights: str | None = None  # checkpoint to start from (converted DeepLabV2, torchvision, ours)
    strict_weights: bool = True
    preprocessing: str = "caffe"  # caffe (BGR, 0-255, mean) | torchvision (RGB, ImageNet mean/std)


@dataclass
class DataConfig:
    """Which dataset, where, and the DeepLabV2 training augmentation."""

    dataset: str = "voc"  # voc | cityscapes | synthetic
    root: str | None = None  # VOC: the VOC2012 folder; Cityscapes: the folder with leftImg8bit/
    train_split: str = "trainaug"
    val_split: str = "val"
    crop_size: int = 321
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    ignore_index: int = 255
    num_workers: int = 2
    synthetic_image_size: int = 96  # the synthetic dataset only
    synthetic_train_samples: int = 2000
    synthetic_val_samples: int = 64
    synthetic_seed: int = 0


@dataclass
class TrainConfig:
    """SGD with the poly policy, as DeepLabV2; iteration-based."""

    iterations: int = 20000
    batch_size: int = 10  # per optimizer step, over all processes and accumulation steps
    accumulation_steps: int = 1
    base_lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    head_weight_lr_mult: float = 10.0
    head_bias_lr_mult: float = 20.0
    amp: str = "none"  # none | bf16 | fp16
    checkpoint_every: int = 1000
    keep_checkpoints: int | None = None  # keep the newest N iter_*.pt (and latest.pt); null: all
    log_every: int = 20
    output_dir: str = "runs/voc"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class CRFConfig:
    """DenseCRF post-processing (deeplabv2_ext.dense_crf arguments); the defaults are DeepLabV2's
    VOC settings (bi_w 4, bi_xy_std 67, bi_rgb_std 3, pos_w 3, pos_xy_std 1, 10 iterations)."""

    iterations: int = 10
    bilateral_weight: float = 4.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    gaussian_weight: float = 3.0
    gaussian_sxy: float = 1.0


@dataclass
class EvalConfig:
    """Evaluation: input scales and flipping (softmax probabilities averaged), CRF on or off."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: bool = False
    batch_size: int = 1


@dataclass
class Config:
    """Everything a run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A plain nested dict (tuples as lists), as written to a run's config.yaml."""
        return _plain(dataclasses.asdict(self))


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a value of the wrong type."""


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Checks and converts one YAML value to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _convert(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0], where) for item in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(item, arg, where) for item, arg in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {annotation!r}")


def _section_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def merge(config: Config, values: dict[str, Any], source: str) -> Config:
    """Returns `config` with the nested `values` ({section: {key: value}}) applied."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
    sections = {item.name for item in dataclasses.fields(config)}
    unknown = sorted(set(values) - sections)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {sorted(sections)}")
    updated = {}
    for name, entries in values.items():
        section = getattr(config, name)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping")
        field_types = _section_types(section)
        unknown_keys = sorted(set(entries) - set(field_types))
        if unknown_keys:
            raise ConfigError(
                f"{source}: unknown key(s) {[f'{name}.{key}' for key in unknown_keys]}; "
                f"known: {sorted(field_types)}"
            )
        changes = {
            key: _convert(value, field_types[key], f"{source}: {name}.{key}")
            for key, value in entries.items()
        }
        updated[name] = dataclasses.replace(section, **changes)
    return dataclasses.replace(config, **updated)


def config_path(name_or_path: str) -> Path:
    """A config file: an existing path, or the name of a shipped config ("voc", "demo", ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(item.stem for item in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config '{name_or_path}' is neither a file nor one of {known}")


def load_config(name_or_path: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file (a path or a shipped name), then `section.key=value` overrides.

    Override values are parsed as YAML scalars/lists: `train.iterations=100`,
    `model.rates=[2,4,8,12]`, `model.weights=null`.
    """
    config = Config()
    if name_or_path is not None:
        path = config_path(name_or_path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        config = merge(config, values, str(path))
    for override in overrides:
        key, sep, text = override.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override '{override}': expected section.key=value")
        config = merge(config, {section: {name: yaml.safe_load(text)}}, f"override '{override}'")
    return config


def save_config(config: Config, path: Path) -> None:
    """Writes the config as YAML (what a run used, next to its checkpoints and logs)."""
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
