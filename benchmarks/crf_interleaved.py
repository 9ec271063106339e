"""dense_crf against pydensecrf, interleaved call by call in one process (for noisy machines).

    python benchmarks/crf_interleaved.py [--size 512] [--labels 21] [--threads 1] [--pairs 7]

A real photograph (skimage.data.astronaut) with a smooth random unary, DeepLab-v2 VOC
parameters, 10 iterations; one warm-up call each, then --pairs (ours, pydensecrf) pairs; prints
the medians and their ratio. Alternating the two cancels most of a drifting VM's speed changes,
which pytest-benchmark (all rounds of one variant, then the next) does not.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import deeplabv2_ext
from crf_inputs import VOC_CRF_PARAMS as PARAMS
from crf_inputs import astronaut_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pydensecrf.densecrf as dcrf

    size, labels = args.size, args.labels
    photo, image, unary = astronaut_inputs(size, labels, torch.Generator().manual_seed(0))
    energy = np.ascontiguousarray(-unary[0].reshape(labels, -1).numpy())

    def theirs() -> np.ndarray:
        crf = dcrf.DenseCRF2D(size, size, labels)
        crf.setUnaryEnergy(energy)
        crf.addPairwiseGaussian(sxy=PARAMS["gaussian_sxy"], compat=PARAMS["gaussian_weight"])
        crf.addPairwiseBilateral(sxy=PARAMS["bilateral_sxy"], srgb=PARAMS["bilateral_srgb"],
                                 rgbim=photo, compat=PARAMS["bilateral_weight"])
        return np.array(crf.inference(10))

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return deeplabv2_ext.dense_crf(unary, image, 10, **PARAMS)

    error = np.abs(ours()[0].reshape(labels, -1).numpy() - theirs()).max()
    ours_s, theirs_s = [], []
    for _ in range(args.pairs):
        start = time.perf_counter()
        ours()
        middle = time.perf_counter()
        theirs()
        ours_s.append(middle - start)
        theirs_s.append(time.perf_counter() - middle)
    ratio = np.median(theirs_s) / np.median(ours_s)
    print(f"{size}x{size} L={labels}, {args.threads} thread(s): ours {1e3 * np.median(ours_s):.0f} ms, "
          f"pydensecrf {1e3 * np.median(theirs_s):.0f} ms, speed-up {ratio:.2f}x "
          f"(medians of {args.pairs} pairs; max |dQ| {error:.1e})")


if __name__ == "__main__":
    main()
