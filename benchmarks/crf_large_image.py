"""Time and peak memory of dense_crf (no grad, CPU) on one large photograph.

    python benchmarks/crf_large_image.py [--height 3000] [--width 4000] [--labels 5]
                                         [--threads 2] [--repeats 1]

The input is skimage's coffee photograph resized to height x width with a smooth random unary;
DeepLab-v2 VOC parameters, 10 iterations. Prints the median wall time and the process's peak
resident memory (ru_maxrss) before the inputs are built and after the last call, so the
difference bounds what the inputs and the CRF held at once.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

import deeplabv2_ext
from crf_inputs import VOC_CRF_PARAMS, photo_inputs


def peak_rss_mib() -> float:
    """The peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = peak_rss_mib()
    _, image, unary = photo_inputs("coffee", args.height, args.width, args.labels,
                                   torch.Generator().manual_seed(0))
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            q = deeplabv2_ext.dense_crf(unary, image, 10, **VOC_CRF_PARAMS)
        seconds.append(time.perf_counter() - start)
    assert torch.isfinite(q).all()
    print(f"{args.height}x{args.width} L={args.labels}, {args.threads} thread(s), 10 iterations: "
          f"{np.median(seconds):.1f} s (median of {args.repeats}); peak RSS {before:.0f} MiB "
          f"before the inputs, {peak_rss_mib():.0f} MiB after")


if __name__ == "__main__":
    main()
