"""DeepLabV2 training: SGD + poly, gradient accumulation, AMP, DDP (torchrun), exact resume.

`train(config, resume=None)` runs it; see `deeplabv2.train.loop`. The pieces are importable on
their own: `optim` (parameter groups, poly schedule), `checkpoint` (atomic save, RNG states),
`distributed` (process group, DDP, the resumable sampler) and `logs` (CSV, TensorBoard, tqdm).
"""
from deeplabv2.train.checkpoint import load_checkpoint, resolve_resume
from deeplabv2.train.distributed import ResumableSampler, is_main_process, resolve_device
from deeplabv2.train.loop import TrainResult, micro_batch_size, segmentation_loss, train
from deeplabv2.train.optim import PolyLR, build_optimizer, build_scheduler, param_groups, poly_lr

__all__ = [
    "PolyLR",
    "ResumableSampler",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "is_main_process",
    "load_checkpoint",
    "micro_batch_size",
    "param_groups",
    "poly_lr",
    "resolve_device",
    "resolve_resume",
    "segmentation_loss",
    "train",
]
