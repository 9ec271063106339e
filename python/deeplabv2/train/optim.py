"""DeepLabV2's optimizer: SGD with momentum, per-group learning-rate multipliers, the poly policy.

The four parameter groups follow the Caffe prototxt of DeepLabV2: backbone weights (lr x1, weight
decay), backbone biases and other 1-D parameters (lr x1, no weight decay), head weights
(lr x `head_weight_lr_mult`, weight decay) and head biases (lr x `head_bias_lr_mult`, no weight
decay). The head is every parameter under a submodule named `aspp`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deeplabv2.config import TrainConfig

HEAD_MODULE = "aspp"


def is_head_parameter(name: str) -> bool:
    """True for a parameter of the head: its qualified name has an `aspp` module component."""
    return HEAD_MODULE in name.split(".")[:-1]


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The SGD parameter groups of `model` (parameters with requires_grad False are left out).

    Every group has `params`, `name`, `lr_mult`, `lr` (= base_lr x lr_mult) and `weight_decay`;
    empty groups are omitted. Weight decay applies to weights only, never to biases (parameters
    named `bias`, whatever their shape: the fused ASPP bias is [R, K]) or other 1-D parameters.
    """
    specs = {
        "backbone_weight": (1.0, config.weight_decay),
        "backbone_bias": (1.0, 0.0),
        "head_weight": (config.head_weight_lr_mult, config.weight_decay),
        "head_bias": (config.head_bias_lr_mult, 0.0),
    }
    members: dict[str, list[nn.Parameter]] = {name: [] for name in specs}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "head" if is_head_parameter(name) else "backbone"
        kind = "bias" if name.rsplit(".", 1)[-1] == "bias" or parameter.ndim <= 1 else "weight"
        members[f"{part}_{kind}"].append(parameter)
    return [
        {
            "params": members[name],
            "name": name,
            "lr_mult": lr_mult,
            "lr": config.base_lr * lr_mult,
            "weight_decay": weight_decay,
        }
        for name, (lr_mult, weight_decay) in specs.items()
        if members[name]
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD over `param_groups(model, config)` with the configured momentum."""
    return torch.optim.SGD(
        param_groups(model, config),
        lr=config.base_lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float) -> float:
    """The poly policy: base_lr * (1 - iteration / max_iterations) ** power (0 from the end on)."""
    if max_iterations <= 0:
        raise ValueError(f"max_iterations must be positive, got {max_iterations}")
    remaining = max(0.0, 1.0 - iteration / max_iterations)
    return base_lr * remaining**power


class PolyLR:
    """Sets every group's lr to poly_lr(base_lr, iteration, ...) x the group's `lr_mult`.

    `step()` is called once per optimizer step; the learning rate is a closed form of the
    iteration, so restoring `state_dict()` (the iteration) reproduces it exactly. The schedule
    itself (base_lr, max_iterations, power) comes from the constructor, i.e. from the config of
    the run that resumes.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        max_iterations: int,
        power: float,
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.max_iterations = max_iterations
        self.power = power
        self.iteration = 0
        self._apply()

    def _apply(self) -> None:
        lr = poly_lr(self.base_lr, self.iteration, self.max_iterations, self.power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def step(self) -> None:
        """Advances one iteration and updates the groups' learning rates."""
        self.iteration += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The current learning rate of every group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, int]:
        """The iteration the schedule is at."""
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores the iteration and sets the learning rates for it."""
        self.iteration = int(state["iteration"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> PolyLR:
    """The poly schedule over `config.iterations` iterations."""
    return PolyLR(optimizer, config.base_lr, config.iterations, config.poly_power)
