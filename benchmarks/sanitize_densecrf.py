"""Exercise the CUDA DenseCRF ops for compute-sanitizer (memcheck / racecheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_densecrf.py [--tiny]

Runs the lattice build and filter for several feature dimensions and batch sizes, and a
batched dense_crf (the fused mean-field op without gradients; forward + backward of the
differentiable loop), and checks each result against the CPU op.
"""
from __future__ import annotations

import argparse

import torch

import deeplabv2_ext
from deeplabv2_ext.densecrf import build_lattice


def check_filter(batch: int, dim: int, points: int, values: int) -> None:
    features = torch.rand(batch, dim, points) * 4
    data = torch.randn(batch, points, values)
    expected = build_lattice(features).filter_points(data)
    got = build_lattice(features.cuda()).filter_points(data.cuda()).cpu()
    error = (got - expected).abs().max().item()
    assert error < 1e-4, f"filter N={batch} D={dim} P={points} V={values}: max error {error}"


def check_crf(batch: int, height: int, width: int, labels: int) -> None:
    unary = torch.randn(batch, labels, height, width)
    image = (torch.rand(batch, 3, height, width) * 255).to(torch.uint8)
    expected = deeplabv2_ext.dense_crf(unary, image, 3)
    with torch.no_grad():  # the fused mean-field op
        fused = deeplabv2_ext.dense_crf(unary.cuda(), image.cuda(), 3)
    error = (fused.cpu() - expected).abs().max().item()
    assert error < 1e-4, f"fused dense_crf N={batch} {height}x{width} L={labels}: max error {error}"
    unary_cuda = unary.cuda().requires_grad_()  # the differentiable loop around the filter op
    got = deeplabv2_ext.dense_crf(unary_cuda, image.cuda(), 3)
    got.square().sum().backward()
    error = (got.detach().cpu() - expected).abs().max().item()
    assert error < 1e-4, f"dense_crf N={batch} {height}x{width} L={labels}: max error {error}"
    assert torch.isfinite(unary_cuda.grad).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small sizes (racecheck is slow)")
    args = parser.parse_args()
    torch.manual_seed(0)
    filter_cases = [(1, 2, 50, 3), (2, 5, 40, 21)] if args.tiny else [
        (1, 1, 300, 1), (2, 2, 500, 3), (3, 5, 700, 21), (1, 16, 200, 4), (0, 5, 10, 3)]
    for case in filter_cases:
        check_filter(*case)
    crf_cases = [(2, 6, 5, 3)] if args.tiny else [(2, 17, 13, 5), (1, 1, 1, 2), (1, 64, 48, 21)]
    for case in crf_cases:
        check_crf(*case)
    torch.cuda.synchronize()
    print("sanitize_densecrf: all cases ran and matched the CPU op")


if __name__ == "__main__":
    main()
