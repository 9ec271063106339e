"""DeepLabV2 training: iteration-based SGD with the poly policy, gradient accumulation, AMP, DDP,
exact resume from atomic checkpoints.

`config.train.batch_size` is the global batch of one optimizer step: world_size x
accumulation_steps x the per-process micro-batch. The loss of a micro-batch is the sum, over the
network's outputs (every MSC scale and their max in training mode, or the single logits), of the
cross-entropy (mean over the non-ignored pixels) against the labels resized (nearest) to each
output; it is divided by accumulation_steps, and DDP averages the gradients over processes.
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deeplabv2.config import Config, TrainConfig, save_config
from deeplabv2.data import build_train_dataset
from deeplabv2.models import build_model, padding_rgb, preprocess
from deeplabv2.train import distributed
from deeplabv2.train.checkpoint import (
    latest_path,
    load_checkpoint,
    resolve_resume,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
    weights_path,
)
from deeplabv2.train.distributed import DistributedContext, ResumableSampler
from deeplabv2.train.logs import LogRow, TrainLogger
from deeplabv2.train.optim import PolyLR, build_optimizer, build_scheduler

AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
CONFIG_NAME = "config.yaml"


@dataclass(frozen=True)
class TrainResult:
    """What a training run did and wrote (the paths are written by rank 0)."""

    iteration: int  # the final iteration
    losses: list[tuple[int, float]]  # (iteration, loss) of every iteration of this run
    images_per_s: float  # global training throughput of this run (0.0 if it ran no iteration)
    output_dir: Path
    model_path: Path  # the final weights alone (model.pt)
    checkpoint_path: Path  # checkpoints/latest.pt
    config_path: Path
    log_path: Path


def micro_batch_size(config: TrainConfig, world_size: int) -> int:
    """The per-process batch of one forward/backward: batch_size / (world_size x accumulation)."""
    if config.accumulation_steps < 1:
        raise ValueError(f"train.accumulation_steps must be >= 1, got {config.accumulation_steps}")
    per_step = world_size * config.accumulation_steps
    if config.batch_size < per_step or config.batch_size % per_step:
        raise ValueError(
            f"train.batch_size={config.batch_size} must be a positive multiple of world_size "
            f"({world_size}) x train.accumulation_steps ({config.accumulation_steps}) = {per_step}"
        )
    return config.batch_size // per_step


def resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Labels [N, H, W] resized to `size` by nearest-neighbour sampling (ignore stays ignore)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


def segmentation_loss(
    outputs: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Sum over `outputs` of the cross-entropy with the labels resized to each output's size.

    Each term is the mean over pixels whose label is not `ignore_index` (0 when there are none),
    computed in float32 whatever the autocast dtype of the logits.
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = torch.zeros((), device=labels.device)
    for logits in outputs:
        target = resize_labels(labels, logits.shape[-2:])
        summed = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
        total = total + summed / (target != ignore_index).sum().clamp(min=1)
    return total


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and CUDA), numpy and `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class BatchStream:
    """Micro-batches over epochs without end, keeping the sampler position for checkpoints.

    `position` is (epoch, offset) after the last micro-batch returned: where a resumed run
    continues. The end of an epoch too short for one more micro-batch per rank is skipped.
    """

    def __init__(self, loader: DataLoader, sampler: ResumableSampler, epoch: int, offset: int):
        self.loader = loader
        self.sampler = sampler
        self.step = loader.batch_size * sampler.world_size  # permutation entries per micro-batch
        if sampler.samples_per_epoch < self.step:
            raise ValueError(
                f"the training set has {sampler.dataset_size} samples, fewer than one "
                f"micro-batch ({loader.batch_size}) on each of {sampler.world_size} process(es)"
            )
        self.epoch, self.offset = epoch, offset
        self._iterator: Any = None
        self._next_epoch_if_exhausted()

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, offset) of the next micro-batch."""
        return self.epoch, self.offset

    def _next_epoch_if_exhausted(self) -> None:
        if self.offset + self.step > self.sampler.samples_per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0
            self._iterator = None

    def next(self) -> dict[str, Any]:
        """The next micro-batch (a new epoch starts where the previous one ran out)."""
        if self._iterator is None:
            self.sampler.set_position(self.epoch, self.offset)
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        self.offset += self.step
        self._next_epoch_if_exhausted()
        return batch


def _loader(
    dataset: Dataset, sampler: ResumableSampler, micro_batch: int, config: Config,
    device: torch.device,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        # Its own generator: creating iterators never draws from the global torch RNG.
        generator=torch.Generator().manual_seed(config.train.seed),
    )


def _checkpoint_state(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: PolyLR,
    scaler: torch.amp.GradScaler,
    iteration: int,
    stream: BatchStream,
    elapsed_s: float,
    config: Config,
    context: DistributedContext,
) -> dict[str, Any]:
    """Everything needed to continue exactly; called on every rank (the RNG states are
    gathered), written by rank 0."""
    epoch, offset = stream.position
    return {
        "iteration": iteration,
        "model": distributed.unwrap(network).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "sampler": {"epoch": epoch, "offset": offset},
        "rng": distributed.all_gather_objects(rng_state(), context),
        "elapsed_s": elapsed_s,
        "world_size": context.world_size,
        "config": config.to_dict(),
    }


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: PolyLR,
    scaler: torch.amp.GradScaler,
    context: DistributedContext,
) -> tuple[int, int, int, float]:
    """Loads a checkpoint into the training objects and this rank's RNGs; returns (iteration,
    epoch, offset, elapsed_s) to continue from."""
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]  # one entry per rank of the run that saved it
    set_rng_state(rng[context.rank] if context.rank < len(rng) else rng[0])
    # The offset counts permutation entries consumed over all ranks. Under another number of
    # processes it is rounded down to a multiple of it (a few samples may be seen again).
    offset = state["sampler"]["offset"]
    offset -= offset % context.world_size
    return state["iteration"], state["sampler"]["epoch"], offset, state["elapsed_s"]


def _validate(config: TrainConfig) -> None:
    if config.amp not in AMP_DTYPES:
        raise ValueError(f"train.amp must be one of {sorted(AMP_DTYPES)}, got {config.amp!r}")
    for key in ("iterations", "checkpoint_every", "log_every"):
        if getattr(config, key) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {getattr(config, key)}")
    if config.keep_checkpoints is not None and config.keep_checkpoints < 1:
        raise ValueError(f"train.keep_checkpoints must be >= 1 or null (keep all), "
                         f"got {config.keep_checkpoints}")


def train(config: Config, resume: str | None = None) -> TrainResult:
    """Trains `build_model(config.model)` on the training split of `config.data`.

    `resume`: None (start fresh), a checkpoint path, or "auto" (`{output_dir}/checkpoints/
    latest.pt` when it exists). Started by torchrun, every process calls this; the process group
    is joined here and destroyed on return or on an exception. Rank 0 writes config.yaml,
    train_log.csv, the checkpoints and model.pt under `config.train.output_dir`.
    """
    _validate(config.train)
    context, device = distributed.setup(config.train.device)
    try:
        return _train(config, resume, context, device)
    finally:
        distributed.cleanup(context)


def _train(
    config: Config, resume: str | None, context: DistributedContext, device: torch.device
) -> TrainResult:
    settings = config.train
    micro_batch = micro_batch_size(settings, context.world_size)
    output_dir = Path(settings.output_dir)
    style = config.model.preprocessing
    amp_dtype = AMP_DTYPES[settings.amp]

    seed_everything(settings.seed)
    model = build_model(config.model).to(device)
    # config.yaml and the checkpoints record the resizing convention in use, also when
    # build_model chose it from the weights' layout.
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, msc_resizing=model.resizing)
    )
    train_set = build_train_dataset(config.data, padding_rgb(style))
    if train_set.num_classes != config.model.num_classes:
        raise ValueError(
            f"model.num_classes={config.model.num_classes} but the training set has "
            f"{train_set.num_classes} classes"
        )
    optimizer = build_optimizer(model, settings)
    scheduler = build_scheduler(optimizer, settings)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.amp == "fp16")

    iteration, epoch, offset, elapsed_before = 0, 0, 0, 0.0
    resume_from = resolve_resume(resume, output_dir)
    if resume_from is not None:
        iteration, epoch, offset, elapsed_before = _restore(
            resume_from, model, optimizer, scheduler, scaler, context
        )

    network = distributed.wrap(model, context, device)
    network.train()
    sampler = ResumableSampler(len(train_set), settings.seed, context.rank, context.world_size)
    loader = _loader(train_set, sampler, micro_batch, config, device)
    stream = BatchStream(loader, sampler, epoch, offset)

    config_path = output_dir / CONFIG_NAME
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, config_path)
    logger = TrainLogger(output_dir, iteration, settings.iterations, context.is_main)

    losses: list[tuple[int, float]] = []
    pending: list[tuple[int, torch.Tensor]] = []
    start_iteration = iteration
    start = window_start = time.perf_counter()
    window_iteration = iteration
    accumulation = settings.accumulation_steps
    try:
        while iteration < settings.iterations:
            step_loss = torch.zeros((), device=device)
            for micro_step in range(accumulation):
                batch = stream.next()
                images = preprocess(batch["image"].to(device, non_blocking=True), style)
                labels = batch["label"].to(device, non_blocking=True)
                with distributed.no_sync(network, micro_step < accumulation - 1):
                    with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
                        outputs = network(images)
                    loss = segmentation_loss(outputs, labels, train_set.ignore_index)
                    loss = loss / accumulation
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            iteration += 1
            pending.append((iteration, step_loss))
            logger.step()

            finished = iteration == settings.iterations
            if iteration % settings.log_every == 0 or finished:
                values = torch.stack([value for _, value in pending])
                values = distributed.mean_over_ranks(values, context).tolist()
                window = [(it, value) for (it, _), value in zip(pending, values)]
                losses.extend(window)
                pending.clear()
                now = time.perf_counter()
                logger.log(
                    LogRow(
                        iteration=iteration,
                        loss=sum(value for _, value in window) / len(window),
                        lr=scheduler.get_last_lr()[0],
                        images_per_s=(iteration - window_iteration) * settings.batch_size
                        / (now - window_start),
                        elapsed_s=elapsed_before + now - start,
                    )
                )
                window_start, window_iteration = now, iteration
            if iteration % settings.checkpoint_every == 0 or finished:
                checkpoint = _checkpoint_state(
                    network, optimizer, scheduler, scaler, iteration, stream,
                    elapsed_before + time.perf_counter() - start, config, context,
                )
                if context.is_main:
                    save_checkpoint(checkpoint, output_dir, iteration, settings.keep_checkpoints)
        seconds = time.perf_counter() - start
        if context.is_main:
            save_weights(distributed.unwrap(network).state_dict(), output_dir)
        distributed.barrier()
    finally:
        logger.close()

    done = iteration - start_iteration
    return TrainResult(
        iteration=iteration,
        losses=losses,
        images_per_s=done * settings.batch_size / seconds if done else 0.0,
        output_dir=output_dir,
        model_path=weights_path(output_dir),
        checkpoint_path=latest_path(output_dir),
        config_path=config_path,
        log_path=logger.path,
    )
