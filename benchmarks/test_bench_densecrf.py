"""Benchmarks: DenseCRF mean-field inference, deeplabv2_ext.dense_crf vs pydensecrf.

Groups are (size, batch): "crf-321x321-L21-N8" etc., L = 21 labels, 10 iterations, DeepLab-v2's
VOC parameters (bilateral w=4, sxy=121, srgb=5; gaussian w=3, sxy=3). In each group:
  ours-cpu / ours-cuda     deeplabv2_ext.dense_crf on the whole batch (lattice build included),
                           under torch.no_grad()
  pydensecrf               pydensecrf.densecrf.DenseCRF2D, one image after the other (CPU,
                           single-threaded): setUnaryEnergy + 2 pairwise terms + inference
  shim-cpu / shim-cuda     the same calls through deeplabv2_ext.compat.pydensecrf (the drop-in
                           import), device="cuda" for shim-cuda
The inputs are a real photograph (skimage.data) and a smooth realistic unary. Max |dQ| of ours
vs pydensecrf is recorded in extra_info (and in the summary's error column).

Options (environment variables; the command-line option is used when benchmarks/conftest.py
defines it):
  --crf-device cpu|cuda   CRF_BENCH_DEVICE    default: cuda when available, else cpu
                          CRF_BENCH_SIZES     e.g. "321,512,1024" (default: 321,512 on CPU,
                                              321,512,1024 on CUDA)
                          CRF_BENCH_BATCHES   e.g. "1,8" (default)
                          CRF_BENCH_ROUNDS    timed rounds of ours-* (default: 2 on CPU, 10 on
                                              CUDA)
                          CRF_BENCH_BASELINE_ROUNDS  timed rounds of pydensecrf and shim-*
                                              (default: CRF_BENCH_ROUNDS on CPU, 1 with
                                              --crf-device cuda: one pass of pydensecrf over
                                              all groups takes about a minute)
                          CRF_BENCH_NO_PYDENSECRF=1  skip the baseline (e.g. at 4000x3000)
                          CRF_BENCH_THREADS   torch threads for ours (default: torch's);
                                              1 gives the single-threaded comparison

Run:  CRF_BENCH_DEVICE=cpu pytest benchmarks/test_bench_densecrf.py [--benchmark-json=out.json]
"""
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deeplabv2_ext
from crf_inputs import VOC_CRF_PARAMS as PARAMS

L = 21
ITERATIONS = 10


def _env_list(name):
    v = os.environ.get(name)
    return [int(s) for s in v.split(",") if s.strip()] if v else None


def crf_device(config):
    """--crf-device / CRF_BENCH_DEVICE, resolved by benchmarks/conftest.py."""
    return config.crf_bench_device


@dataclass(frozen=True)
class Spec:
    device: str
    size: int
    batch: int
    variant: str

    @property
    def group(self):
        return f"crf-{self.size}x{self.size}-L{L}-N{self.batch}"

    @property
    def id(self):
        return f"{self.size}-N{self.batch}-{self.variant}"


def _specs(config):
    dev = crf_device(config)
    sizes = _env_list("CRF_BENCH_SIZES") or ([321, 512] if dev == "cpu" else [321, 512, 1024])
    batches = _env_list("CRF_BENCH_BATCHES") or [1, 8]
    variants = [f"ours-{dev}", f"shim-{dev}"]
    if os.environ.get("CRF_BENCH_NO_PYDENSECRF", "0") in ("0", "", "false", "no"):
        variants.append("pydensecrf")
    return [Spec(dev, s, n, v) for s in sizes for n in batches for v in variants]


def pytest_generate_tests(metafunc):
    if "crf_spec" in metafunc.fixturenames:
        specs = _specs(metafunc.config)
        metafunc.parametrize("crf_spec", specs, ids=[s.id for s in specs])


_INPUTS = {}


def _inputs(size, batch):
    """uint8 images [batch, size, size, 3] (different crops of real photos) and log-prob unaries
    [batch, L, size, size] (a soft nearest-colour classifier, smoothed)."""
    key = (size, batch)
    if key in _INPUTS:
        return _INPUTS[key]
    import skimage.data
    from skimage.transform import resize

    names = ["astronaut", "coffee", "chelsea", "rocket"]
    imgs = []
    for i in range(batch):
        img = getattr(skimage.data, names[i % len(names)])()[..., :3]
        img = resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        if i >= len(names):
            img = img[:, ::-1]  # a different (mirrored) image for the second round of photos
        imgs.append(np.ascontiguousarray(np.rint(img).astype(np.uint8)))
    image = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(0)
    rgb = image.float() / 255.0  # [N, 3, H, W]
    centres = torch.rand(batch, L, 3, 1, 1, generator=g)
    scores = -((rgb.unsqueeze(1) - centres) ** 2).sum(2) / 0.05  # [N, L, H, W]
    scores = F.avg_pool2d(scores + 0.5 * torch.randn(scores.shape, generator=g), 5, 1, 2, count_include_pad=False)
    unary = torch.log_softmax(scores, 1).contiguous()
    _INPUTS[key] = (imgs, image, unary)
    return _INPUTS[key]


def _pydensecrf_run(dcrf, imgs, unary_np, **densecrf2d_kwargs):
    """pydensecrf's calls, one image after the other, through the module ``dcrf`` (pydensecrf
    or the shim)."""
    out = []
    for img, u in zip(imgs, unary_np):
        H, W = img.shape[:2]
        d = dcrf.DenseCRF2D(W, H, L, **densecrf2d_kwargs)
        d.setUnaryEnergy(np.ascontiguousarray(-u.reshape(L, -1)))
        d.addPairwiseGaussian(sxy=PARAMS["gaussian_sxy"], compat=PARAMS["gaussian_weight"])
        d.addPairwiseBilateral(sxy=PARAMS["bilateral_sxy"], srgb=PARAMS["bilateral_srgb"], rgbim=img,
                               compat=PARAMS["bilateral_weight"])
        out.append(np.array(d.inference(ITERATIONS)).reshape(L, H, W))
    return np.stack(out)


def test_densecrf(benchmark, crf_spec, record_result, request):
    spec = crf_spec
    threads = int(os.environ.get("CRF_BENCH_THREADS", 0))
    if threads:
        torch.set_num_threads(threads)
    dev = spec.device
    imgs, image, unary = _inputs(spec.size, spec.batch)
    peak_mb = None
    error = None

    if spec.variant == "pydensecrf":
        dcrf = pytest.importorskip("pydensecrf.densecrf")
        unary_np = unary.numpy()

        def fn():
            return _pydensecrf_run(dcrf, imgs, unary_np)

        warmup = 0
        role = "baseline"
    elif spec.variant.startswith("shim"):
        from deeplabv2_ext.compat import pydensecrf as shim

        unary_np = unary.numpy()

        def fn():
            return torch.from_numpy(_pydensecrf_run(shim, imgs, unary_np, device=dev))

        warmup = 1 if dev == "cuda" else 0
        role = "ours"
    else:
        u, im = unary.to(dev), image.to(dev)

        def fn():
            with torch.no_grad():
                q = deeplabv2_ext.dense_crf(u, im, ITERATIONS, **PARAMS)
            if dev == "cuda":
                torch.cuda.synchronize()
            return q

        if dev == "cuda":
            fn()  # warm-up (CUDA context, allocator), then the peak memory of one call
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        warmup = 1 if dev == "cuda" else 0
        role = "ours"

    rounds = int(os.environ.get("CRF_BENCH_ROUNDS", 0)) or (10 if dev == "cuda" else 2)
    if spec.variant != f"ours-{dev}":
        rounds = int(os.environ.get("CRF_BENCH_BASELINE_ROUNDS", 0)) or (1 if dev == "cuda" else rounds)
    benchmark.group = spec.group
    benchmark.name = spec.variant
    benchmark.extra_info.update(
        {
            "group": spec.group,
            "variant": spec.variant,
            "role": role,
            "device": dev if role == "ours" else "cpu",
            "device_name": torch.cuda.get_device_name(0) if (dev == "cuda" and role == "ours") else "cpu",
            "shape": {"N": spec.batch, "L": L, "H": spec.size, "W": spec.size},
            "iterations": ITERATIONS,
            "params": PARAMS,
            "torch_threads": torch.get_num_threads(),
            "peak_mem_mb": peak_mb,
            "rel_err_vs_baseline": None,  # ours: max |dQ| vs pydensecrf on image 0 (set below)
        }
    )
    result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if role == "ours":  # agreement with pydensecrf on image 0, from the last timed call
        try:
            dcrf = pytest.importorskip("pydensecrf.densecrf")
            ref = _pydensecrf_run(dcrf, imgs[:1], unary[:1].numpy())
            error = float(np.abs(result[:1].cpu().numpy() - ref).max())
            benchmark.extra_info["rel_err_vs_baseline"] = error
        except pytest.skip.Exception:
            pass
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    record_result(group=spec.group, variant=spec.variant, role=role, median_s=median, flops=None,
                  peak_mb=peak_mb, error=error)
