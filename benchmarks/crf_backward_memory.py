"""What autograd keeps for a DenseCRF backward, and how long forward and backward take.

    python benchmarks/crf_backward_memory.py [--size 512] [--labels 21] [--iterations 10]
                                             [--device cpu|cuda] [--threads N] [--trainable]

Counts the distinct storages packed by saved-tensor hooks during the forward (the unary itself
excluded) and reports their total size next to one N*L*H*W tensor; times forward and backward
(median of --repeats runs). The input is a real photograph (skimage.data.astronaut) with a
smooth random unary.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import deeplabv2_ext
from crf_inputs import astronaut_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainable", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size, labels = args.size, args.labels
    generator = torch.Generator().manual_seed(0)
    _, image, unary = astronaut_inputs(size, labels, generator)
    image, unary = image.to(args.device), unary.to(args.device)
    weights = torch.randn(unary.shape, generator=generator).to(args.device)
    module = deeplabv2_ext.DenseCRF(args.iterations, trainable=args.trainable,
                                    num_labels=labels).to(args.device)

    def sync() -> None:
        if unary.is_cuda:
            torch.cuda.synchronize()

    forward_s, backward_s = [], []
    for _ in range(args.repeats):
        u = unary.clone().requires_grad_(True)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() != u.untyped_storage().data_ptr():
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        sync()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            q = module(u, image)
        sync()
        middle = time.perf_counter()
        (q * weights).sum().backward()
        sync()
        forward_s.append(middle - start)
        backward_s.append(time.perf_counter() - middle)
    one = unary.numel() * unary.element_size()
    print(f"{size}x{size} L={labels} iterations={args.iterations} trainable={args.trainable} "
          f"on {args.device} ({torch.get_num_threads()} threads): forward "
          f"{1e3 * np.median(forward_s):.0f} ms, backward {1e3 * np.median(backward_s):.0f} ms; "
          f"saved {sum(storages.values()) / 2**20:.0f} MiB in {len(storages)} storages, "
          f"{sum(1 for n in storages.values() if n == one)} of them N*L*H*W "
          f"({one / 2**20:.1f} MiB each)")


if __name__ == "__main__":
    main()
