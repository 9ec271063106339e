"""Atomic checkpoints that resume training exactly, and the weights-only model file.

A checkpoint is a dict of tensors and plain Python values only, so that it loads with
`torch.load(..., weights_only=True)`: RNG states are stored as tensors, lists and numbers.
Files are written to a temporary file in the same directory, flushed, fsynced and renamed over
the target (`os.replace`), so an interrupted save never leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
WEIGHTS = "model.pt"


def checkpoint_path(output_dir: Path, iteration: int) -> Path:
    """`{output_dir}/checkpoints/iter_{iteration:06d}.pt`."""
    return output_dir / CHECKPOINT_DIR / f"iter_{iteration:06d}.pt"


def latest_path(output_dir: Path) -> Path:
    """`{output_dir}/checkpoints/latest.pt`."""
    return output_dir / CHECKPOINT_DIR / LATEST


def weights_path(output_dir: Path) -> Path:
    """`{output_dir}/model.pt`: the final model state_dict alone."""
    return output_dir / WEIGHTS


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` only once it is completely written and synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Makes a rename in `directory` durable (where the platform allows opening directories)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save(obj, path)`, atomically."""
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def atomic_copy(source: Path, path: Path) -> None:
    """Copies `source` to `path`, atomically."""
    with atomic_file(path) as handle, open(source, "rb") as reader:
        shutil.copyfileobj(reader, handle)


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU, this process's current CUDA device if CUDA is in use,
    numpy, `random`) as plain values. Only the current device: querying every GPU would create a
    CUDA context on each of them in every torchrun process."""
    numpy_name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": {
            "name": numpy_name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what `rng_state()` returned (the CUDA state into the current device)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))


def save_checkpoint(
    state: dict[str, Any], output_dir: Path, iteration: int, keep: int | None = None
) -> Path:
    """Writes `iter_{iteration:06d}.pt`, then `latest.pt` as a copy of it; both atomically.

    With `keep`, then prunes the older checkpoints (`prune_checkpoints`). Returns the path of the
    iteration's checkpoint.
    """
    path = checkpoint_path(output_dir, iteration)
    atomic_save(state, path)
    atomic_copy(path, latest_path(output_dir))
    if keep is not None:
        prune_checkpoints(output_dir, iteration, keep)
    return path


def prune_checkpoints(output_dir: Path, iteration: int, keep: int) -> list[Path]:
    """Deletes `iter_*.pt` files older than the `keep` newest up to `iteration` (which is kept).

    `latest.pt` is never touched, nor checkpoints past `iteration` (another run's, in a reused
    folder). Called once `iteration`'s checkpoint and `latest.pt` are complete, so an interrupted
    prune leaves extra files, never missing ones. Returns the deleted paths.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    older = []
    for path in (output_dir / CHECKPOINT_DIR).glob("iter_*.pt"):
        number = path.stem.removeprefix("iter_")
        if number.isdigit() and int(number) < iteration:
            older.append((int(number), path))
    doomed = [path for _, path in sorted(older)[: max(0, len(older) - (keep - 1))]]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if doomed:
        _sync_directory(output_dir / CHECKPOINT_DIR)
    return doomed


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint` (loaded with weights_only=True)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: None (start fresh), a path, or "auto" (`latest.pt` of
    `output_dir` if it exists, else None). A path that does not exist is an error."""
    if resume is None:
        return None
    if resume == "auto":
        latest = latest_path(output_dir)
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    return path


def save_weights(state_dict: dict[str, torch.Tensor], output_dir: Path) -> Path:
    """Writes `{output_dir}/model.pt` (the model state_dict alone), atomically."""
    path = weights_path(output_dir)
    atomic_save(state_dict, path)
    return path

