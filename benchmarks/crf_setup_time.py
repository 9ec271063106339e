"""The CPU setup time of dense_crf: lattice builds plus the mean-field op's setup (normalisers,
splat/slice weights, point order, unary copy), without the iterations.

    python -P benchmarks/crf_setup_time.py [--size 512] [--labels 21] [--runs 41]

Runs on skimage's astronaut with DeepLab-v2's VOC parameters (benchmarks/crf_inputs.py) and
prints one line with the medians, for 1 and 2 threads:
  dense_crf(iterations=0) with the Gaussian lattice cache cleared first (both lattices built),
  and the dense_crf_mean_field op alone with 0 iterations on prebuilt lattices (the op's setup).
Uses only APIs that exist before and after issue 19, so the same command compares two builds
(run it in each build's environment, alternately, on an idle machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from deeplabv2_ext import densecrf as crf
from crf_inputs import VOC_CRF_PARAMS as PARAMS
from crf_inputs import astronaut_inputs


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--runs", type=int, default=41)
    args = parser.parse_args()
    size, labels = args.size, args.labels
    _, image, unary = astronaut_inputs(size, labels, torch.Generator().manual_seed(0))
    lattices = [crf.build_lattice(crf.gaussian_features(1, size, size, PARAMS["gaussian_sxy"],
                                                        image.device)),
                crf.build_lattice(crf.bilateral_features(image, PARAMS["bilateral_sxy"],
                                                         PARAMS["bilateral_srgb"]))]
    unary_points = unary.reshape(1, labels, size * size)
    tiles = crf.pixel_tiles(1, size, size, image.device)

    def dense_crf_setup() -> None:
        crf._cached_gaussian_lattice.cache_clear()
        crf.dense_crf(unary, image, 0, **PARAMS)

    def op_setup() -> None:
        crf.fused_mean_field(unary_points, lattices, [PARAMS["gaussian_weight"],
                                                      PARAMS["bilateral_weight"]],
                             0, "symmetric", tiles)

    fields = []
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fields.append(f"{threads} thread(s): dense_crf setup "
                          f"{median_ms(dense_crf_setup, args.runs):.1f} ms, op setup "
                          f"{median_ms(op_setup, args.runs):.1f} ms")
    print(f"crf_setup_time {size}x{size} L={labels} median of {args.runs}: " + "; ".join(fields))


if __name__ == "__main__":
    main()
