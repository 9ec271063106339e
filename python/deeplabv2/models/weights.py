"""Loading checkpoints into DeepLabV2 (or MSC around it), converting published formats by name.

Formats recognised (after unwrapping ``{"model": sd}`` / ``{"state_dict": sd}`` and removing a
DDP ``module.`` prefix):

* ``deeplabv2``: this package's own keys (``backbone.*``, ``aspp.weight``/``aspp.bias`` or
  ``aspp.convs.{r}.*``), with or without MSC's ``base.`` prefix; a fused head loads into a
  ConvASPP head and the other way round.
* ``kazuto1011``: kazuto1011/deeplab-pytorch DeepLabV2 (MSC or not): ``layer1.conv1.conv|bn``
  (the stem), ``layer{2..5}.block{b}.{reduce,conv3x3,increase,shortcut}.{conv,bn}`` (our
  ``layer{1..4}.{b-1}.{conv1/bn1, conv2/bn2, conv3/bn3, downsample.0/.1}``), ``aspp.c{r}``.
* ``isht7``: isht7/pytorch-deeplab-resnet ``MS_Deeplab``: ``Scale.`` + torchvision-like ResNet
  names, head ``Scale.layer5.conv2d_list.{r}``.
* ``torchvision``: a torchvision ImageNet ResNet-50/101 (``conv1.weight``,
  ``layer1.0.conv1.weight``, ..., ``fc.*``): the backbone only; ``fc.*`` is ignored and the
  head keeps its initialisation.
  torchvision's ResNet v1.5 puts a block's stride in its 3x3 convolution where the Caffe model
  (ours) has it in the first 1x1, but every parameter has the same name and shape, so the
  weights load as they are (a fine-tuning start, not the same function).

The per-branch head convolutions of the published formats are stacked into the fused ASPP's
``weight`` [R, K, C, 3, 3] and ``bias`` [R, K]. ``num_batches_tracked`` entries are optional
both ways.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

FORMATS = ("deeplabv2", "kazuto1011", "isht7", "torchvision")
_HEAD_KEYS = ("aspp.weight", "aspp.bias")
_TV_BACKBONE = re.compile(
    r"(conv1\.weight|bn1\.\w+|layer[1-4]\.\d+\.(conv[123]\.weight|bn[123]\.\w+|downsample\.[01]\.\w+))"
)
_KAZUTO_STEM = re.compile(r"layer1\.conv1\.(conv|bn)\.(\w+)")
_KAZUTO_BLOCK = re.compile(
    r"layer([2-5])\.block([1-9]\d*)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(\w+)"
)
_KAZUTO_PARTS = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"),
                 "increase": ("conv3", "bn3"), "shortcut": ("downsample.0", "downsample.1")}
_KAZUTO_HEAD = re.compile(r"aspp\.c(\d+)\.(weight|bias)")
_ISHT7_HEAD = re.compile(r"layer5\.conv2d_list\.(\d+)\.(weight|bias)")
_OURS_CONV_HEAD = re.compile(r"aspp\.convs\.(\d+)\.(weight|bias)")


class WeightsError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model (the message lists why)."""


@dataclass
class LoadReport:
    """What ``load_weights`` did. Model keys carry the model's own prefix (``base.`` in MSC).

    Attributes:
        format: the detected checkpoint format (one of ``FORMATS``).
        loaded: model keys set from the checkpoint.
        kept: model keys deliberately left as they were (the head, for a torchvision checkpoint).
        ignored: checkpoint keys deliberately unused (``fc.*``, surplus ``num_batches_tracked``).
        missing: model keys the checkpoint lacks (left as they were).
        unexpected: checkpoint keys with no place in the model (``ours (from theirs)`` when
            renamed).
        mismatched: ``key: expected (shape), got (shape)`` for wrongly shaped entries (skipped).
        resizing: (convention, why) of the model's multi-scale resizing, when ``build_model``
            chose it (``deeplabv2.models.resizing``); None from ``load_weights`` alone.
    """

    format: str
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    resizing: tuple[str, str] | None = None

    @property
    def complete(self) -> bool:
        """True when nothing was missing, unexpected or wrongly shaped."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line for logs."""
        line = (f"{self.format} checkpoint: {len(self.loaded)} loaded, {len(self.kept)} kept, "
                f"{len(self.ignored)} ignored, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} wrong shape")
        if self.resizing is not None:
            line += f"; multi-scale resizing {self.resizing[0]} ({self.resizing[1]})"
        return line


class _Conversion:
    """Checkpoint entries renamed to our canonical keys (``backbone.*``, ``aspp.weight/bias``).

    Each entry keeps the checkpoint key(s) it came from, as written in the file (``names`` maps
    the prefix-free keys the converters see back to those), for the report.
    """

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = names
        self.entries: dict[str, tuple[Tensor, tuple[str, ...]]] = {}
        self.branches: dict[str, dict[int, tuple[Tensor, str]]] = {"weight": {}, "bias": {}}
        self.unexpected: list[str] = []
        self.ignored: list[str] = []
        self.mismatched: list[str] = []

    def add(self, key: str, tensor: Tensor, source: str) -> None:
        self.entries[key] = (tensor, (self.names[source],))

    def branch(self, index: int, name: str, tensor: Tensor, source: str) -> None:
        self.branches[name][index] = (tensor, self.names[source])

    def unknown(self, source: str) -> None:
        self.unexpected.append(self.names[source])

    def ignore(self, source: str) -> None:
        self.ignored.append(self.names[source])

    def stack_branches(self) -> None:
        """Stacks per-branch head convolutions into ``aspp.weight`` [R, ...] / ``aspp.bias``."""
        for name, branches in self.branches.items():
            if not branches:
                continue
            indices = sorted(branches)
            sources = tuple(branches[i][1] for i in indices)
            shapes = [tuple(branches[i][0].shape) for i in indices]
            if indices != list(range(len(indices))):
                self.mismatched.append(f"aspp.{name}: head branches {list(sources)} are not "
                                       f"numbered 0..{len(indices) - 1}")
            elif len(set(shapes)) != 1:
                self.mismatched.append(f"aspp.{name}: head branches {list(sources)} differ in "
                                       f"shape: {shapes}")
            else:
                stacked = torch.stack([branches[i][0] for i in indices])
                self.entries[f"aspp.{name}"] = (stacked, sources)


def _convert_ours(state: Mapping[str, Tensor], conversion: _Conversion) -> None:
    for key, tensor in state.items():
        head = _OURS_CONV_HEAD.fullmatch(key)
        if head:
            conversion.branch(int(head[1]), head[2], tensor, key)
        elif key.startswith("backbone.") or key in _HEAD_KEYS:
            conversion.add(key, tensor, key)
        else:
            conversion.unknown(key)


def _convert_kazuto(state: Mapping[str, Tensor], conversion: _Conversion) -> None:
    for key, tensor in state.items():
        stem, block, head = (pattern.fullmatch(key)
                             for pattern in (_KAZUTO_STEM, _KAZUTO_BLOCK, _KAZUTO_HEAD))
        if stem:
            module = "conv1" if stem[1] == "conv" else "bn1"
            conversion.add(f"backbone.{module}.{stem[2]}", tensor, key)
        elif block:
            layer, index, part, kind, param = block.groups()
            module = _KAZUTO_PARTS[part][0 if kind == "conv" else 1]
            conversion.add(f"backbone.layer{int(layer) - 1}.{int(index) - 1}.{module}.{param}",
                           tensor, key)
        elif head:
            conversion.branch(int(head[1]), head[2], tensor, key)
        else:
            conversion.unknown(key)


def _convert_torchvision_like(state: Mapping[str, Tensor], conversion: _Conversion) -> None:
    """isht7 (``Scale.`` prefix, ``layer5.conv2d_list`` head) and torchvision (``fc`` ignored)."""
    for key, tensor in state.items():
        name = key.removeprefix("Scale.")
        head = _ISHT7_HEAD.fullmatch(name)
        if _TV_BACKBONE.fullmatch(name):
            conversion.add(f"backbone.{name}", tensor, key)
        elif head:
            conversion.branch(int(head[1]), head[2], tensor, key)
        elif name in ("fc.weight", "fc.bias"):
            conversion.ignore(key)
        else:
            conversion.unknown(key)


_CONVERTERS = {"deeplabv2": _convert_ours, "kazuto1011": _convert_kazuto,
               "isht7": _convert_torchvision_like, "torchvision": _convert_torchvision_like}


def _detect_format(keys: list[str], where: str) -> str:
    if any(key.startswith("backbone.") or key in _HEAD_KEYS or _OURS_CONV_HEAD.fullmatch(key)
           for key in keys):
        return "deeplabv2"
    if any(_KAZUTO_STEM.fullmatch(key) or _KAZUTO_BLOCK.fullmatch(key)
           or _KAZUTO_HEAD.fullmatch(key) for key in keys):
        return "kazuto1011"
    if any(key.startswith("Scale.") or _ISHT7_HEAD.fullmatch(key) for key in keys):
        return "isht7"
    if any(_TV_BACKBONE.fullmatch(key) for key in keys):
        return "torchvision"
    raise WeightsError(f"{where}: unrecognised checkpoint format (known: {list(FORMATS)}); "
                       f"its first keys: {keys[:10]}")


def _read(source: str | os.PathLike | Mapping[str, Tensor]) -> tuple[object, str]:
    if isinstance(source, Mapping):
        return source, "state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_weights: source must be a path or a state dict, "
                        f"got {type(source).__name__}")
    where = os.fspath(source)
    if not os.path.isfile(where):
        raise FileNotFoundError(f"weights file not found (or not a file): {where}")
    try:
        return torch.load(where, map_location="cpu", weights_only=True), where
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise WeightsError(f"{where}: not a checkpoint torch.load(weights_only=True) can read "
                           f"(only tensors and plain containers are accepted): {error}") from error


def _state_dict(checkpoint: object, where: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict inside a checkpoint without ``module.``/``base.`` prefixes, and a map from
    its keys back to those in the checkpoint."""
    if isinstance(checkpoint, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise WeightsError(f"{where}: not a state dict (a non-empty mapping of names to tensors, "
                           f"possibly under 'model' or 'state_dict'), got "
                           f"{type(checkpoint).__name__}")
    bad = [repr(key) for key, value in checkpoint.items()
           if not isinstance(key, str) or not isinstance(value, Tensor)]
    if bad:
        raise WeightsError(f"{where}: not a state dict: entries that are not named tensors: {bad}")
    state = dict(checkpoint)
    names = {key: key for key in state}
    for prefix in ("module.", "base."):
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
            names = {key[len(prefix):]: name for key, name in names.items()}
    return state, names


def _unstack_head(conversion: _Conversion) -> None:
    """For a ConvASPP model: ``aspp.weight`` [R, ...] -> ``aspp.convs.{r}.weight`` (and bias)."""
    for name in ("weight", "bias"):
        if f"aspp.{name}" not in conversion.entries:
            continue
        tensor, sources = conversion.entries.pop(f"aspp.{name}")
        if tensor.dim() == 0:
            conversion.mismatched.append(f"aspp.{name}: a scalar cannot be split into branches "
                                         f"(from {', '.join(sources)})")
            continue
        for index, branch in enumerate(tensor.unbind(0)):
            source = (sources[index] if len(sources) == len(tensor)
                      else f"{sources[0]}[{index}]")
            conversion.entries[f"aspp.convs.{index}.{name}"] = (branch, (source,))


def _failure_message(report: LoadReport, where: str) -> str:
    lines = [f"{where}: the {report.format} checkpoint does not fit the model "
             f"(pass strict=False to load what fits):"]
    for title, keys in (("missing", report.missing), ("unexpected", report.unexpected),
                        ("wrong shape", report.mismatched)):
        if keys:
            lines.append(f"  {title} ({len(keys)}):")
            lines.extend(f"    {key}" for key in keys)
    return "\n".join(lines)


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor],
                 strict: bool = True) -> LoadReport:
    """Loads a checkpoint of any of ``FORMATS`` into a DeepLabV2 or an MSC around one.

    Args:
        model: ``DeepLabV2`` or ``MSC(DeepLabV2)`` (fused or ConvASPP head).
        source: a checkpoint path (read with ``torch.load(path, map_location="cpu",
            weights_only=True)``, never unpickling arbitrary objects) or a state dict.
        strict: raise on any missing, unexpected or wrongly shaped key (all listed); with
            False they are reported in the LoadReport and skipped. For a torchvision checkpoint
            the head is not expected and stays as initialised.

    Returns:
        A LoadReport.

    Raises:
        WeightsError: an unreadable or non-state-dict file (naming the path), an unrecognised
            format, or (strict) keys that do not fit.
    """
    checkpoint, where = _read(source)
    state, names = _state_dict(checkpoint, where)
    detected = _detect_format(list(state), where)
    conversion = _Conversion(names)
    _CONVERTERS[detected](state, conversion)
    conversion.stack_branches()

    model_state = model.state_dict()
    prefix = "base." if any(key.startswith("base.backbone.") for key in model_state) else ""
    if prefix + "backbone.conv1.weight" not in model_state:
        raise TypeError(f"load_weights: expected a DeepLabV2 or an MSC around one, "
                        f"got {type(model).__name__}")
    if prefix + "aspp.convs.0.weight" in model_state:
        _unstack_head(conversion)

    report = LoadReport(detected, ignored=list(conversion.ignored),
                        unexpected=list(conversion.unexpected),
                        mismatched=list(conversion.mismatched))
    to_load: dict[str, Tensor] = {}
    wrong_shape: set[str] = set()
    for key, (tensor, sources) in conversion.entries.items():
        target = prefix + key
        source = ", ".join(sources)
        origin = "" if source == target else f" (from {source})"
        expected = model_state.get(target)
        if expected is None:
            if key.endswith("num_batches_tracked"):
                report.ignored.append(source)
            else:
                report.unexpected.append(target + origin)
        elif expected.shape != tensor.shape:
            wrong_shape.add(target)
            report.mismatched.append(f"{target}: expected {tuple(expected.shape)}, got "
                                     f"{tuple(tensor.shape)}{origin}")
        else:
            to_load[target] = tensor
    for key in model_state:
        if key in to_load or key in wrong_shape or key.endswith("num_batches_tracked"):
            continue
        if detected == "torchvision" and key.startswith(prefix + "aspp."):
            report.kept.append(key)
        else:
            report.missing.append(key)
    if strict and not report.complete:
        raise WeightsError(_failure_message(report, where))
    model.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)
    return report
