"""Tests of the fused mean-field op ``deeplabv2_ext::dense_crf_mean_field`` (CPU and CUDA).

``dense_crf`` runs it when no gradient is needed (and unary is not float64); otherwise it runs the
differentiable loop of torch ops around ``permutohedral_filter``. The agreement of the fused op
with pydensecrf is tested in test_densecrf.py (every no-grad case goes through it); here it is
compared with the differentiable loop, across its two CPU builds (baseline and AVX2, each
selection asserted), with and without the point-group hint, and with a closed form on one-pixel
images; its argument checks and schema are tested, and the lattice's two neighbour searches.
"""
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

import deeplabv2_ext
from deeplabv2_ext import _C, densecrf as crf
from deeplabv2_ext._extension import cpu_isa, cpu_lattice_neighbour_searches

from test_permutohedral import round_trip, slice_alpha

skimage_data = pytest.importorskip("skimage.data")
ops = torch.ops.deeplabv2_ext
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def photo_batch(batch, height, width):
    """[N, 3, H, W] uint8 crops of skimage's astronaut, one offset per image."""
    full = torch.from_numpy(np.ascontiguousarray(skimage_data.astronaut())).permute(2, 0, 1)
    return torch.stack([full[:, 40 * n : 40 * n + height, 60 * n : 60 * n + width]
                        for n in range(batch)]).contiguous()


def smooth_unary(batch, labels, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, labels, max(1, height // 6), max(1, width // 6), generator=g) * 3
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return torch.log_softmax(fine + 0.3 * torch.randn(fine.shape, generator=g), 1)


def differentiable_path(unary, image, iterations, **params):
    """dense_crf through the autograd loop (a unary that requires grad forces it)."""
    return deeplabv2_ext.dense_crf(unary.clone().requires_grad_(), image, iterations,
                                   **params).detach()


def fused_path(unary, image, iterations, **params):
    with torch.no_grad():
        return deeplabv2_ext.dense_crf(unary, image, iterations, **params)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("labels", [1, 3, 21, 33, 40])
@pytest.mark.parametrize("normalization", ["symmetric", "after", "none"])
def test_fused_matches_differentiable_path(labels, normalization, device):
    image = photo_batch(2, 37, 45).to(device)
    unary = smooth_unary(2, labels, 37, 45).to(device)
    params = dict(normalization=normalization)
    if normalization == "none":
        params.update(bilateral_weight=0.05, gaussian_weight=0.03)
    fused = fused_path(unary, image, 5, **params)
    reference = differentiable_path(unary, image, 5, **params)
    torch.testing.assert_close(fused, reference, rtol=0, atol=2e-5)
    torch.testing.assert_close(fused.sum(1), torch.ones(2, 37, 45, device=device), rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["fused", "differentiable"])
def test_unnormalised_crf_of_black_one_pixel_images(path, device):
    """1x1 black images: both kernels' features are 0, where the unnormalised filter multiplies
    a lone point's value by alpha(D) round_trip(D) (derived in test_permutohedral.py), D = 2 for
    the Gaussian and 5 for the bilateral kernel. With normalization="none" and Potts weights the
    update is then Q <- softmax(unary + (w_g c(2) + w_b c(5)) Q), c(D) = alpha(D) round_trip(D),
    which pins the slice constant of both loops (the normalisations divide it out)."""
    weights = dict(gaussian_weight=0.7, bilateral_weight=1.3)
    gain = sum(weights[name] * slice_alpha(d) * round_trip(d)
               for name, d in (("gaussian_weight", 2), ("bilateral_weight", 5)))
    unary = torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(5))
    expected = torch.softmax(unary.double(), 1)
    for _ in range(3):
        expected = torch.softmax(unary.double() + gain * expected, 1)
    image = torch.zeros(3, 3, 1, 1, dtype=torch.uint8, device=device)
    run = fused_path if path == "fused" else differentiable_path
    q = run(unary.to(device), image, 3, normalization="none", **weights)
    torch.testing.assert_close(q.cpu().double(), expected, rtol=0, atol=1e-6)


@pytest.mark.cuda
def test_cuda_fused_matches_cpu_fused():
    """The CUDA op against the CPU op, on photos and on a constant-colour image (one bilateral
    vertex list of thousands of entries: lists that span many of the CUDA splat's blocks)."""
    photos = photo_batch(3, 64, 80)
    flat = torch.full((1, 3, 100, 120), 90, dtype=torch.uint8)
    for image in (photos, flat):
        unary = smooth_unary(image.shape[0], 21, *image.shape[2:])
        for params in (dict(), dict(normalization="after"),
                       dict(compatibility=0.3 * torch.randn(21, 21) - torch.eye(21))):
            cpu = fused_path(unary, image, 10, **params)
            gpu = fused_path(unary.cuda(), image.cuda(), 10,
                             **{k: v.cuda() if isinstance(v, torch.Tensor) else v
                                for k, v in params.items()})
            torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compatibility", ["vector", "matrix"])
@pytest.mark.parametrize("kernels", ["both", "gaussian", "bilateral", "none"])
def test_fused_matches_differentiable_path_compatibility(compatibility, kernels, device):
    labels = 6
    g = torch.Generator().manual_seed(1)
    if compatibility == "vector":
        compat = -(1 + torch.rand(labels, generator=g))
    else:
        compat = 0.3 * torch.randn(labels, labels, generator=g) - torch.eye(labels)
    weights = dict(both=(4.0, 3.0), gaussian=(0.0, 3.0), bilateral=(4.0, 0.0), none=(0.0, 0.0))
    bilateral_weight, gaussian_weight = weights[kernels]
    image = photo_batch(1, 50, 41).to(device)
    unary = smooth_unary(1, labels, 50, 41, seed=2).to(device)
    params = dict(compatibility=compat.to(device), bilateral_weight=bilateral_weight,
                  gaussian_weight=gaussian_weight)
    torch.testing.assert_close(fused_path(unary, image, 4, **params),
                               differentiable_path(unary, image, 4, **params), rtol=0, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("labels", [5, 21])
def test_fused_is_shift_invariant(labels, device):
    """softmax ignores a constant added to every label's score; the fused loop must too, also for
    scores far below 0 (padding lanes once gave exp(+89) = inf and 0 * inf = NaN)."""
    image = photo_batch(1, 30, 40).to(device)
    unary = smooth_unary(1, labels, 30, 40).to(device)
    reference = fused_path(unary, image, 3)
    for shift in (-89.0, -90.0, -250.0, 60.0):
        torch.testing.assert_close(fused_path(unary + shift, image, 3), reference, rtol=0,
                                   atol=1e-4)


def _op_args(unary_nchw, image, groups=None):
    batch, labels, height, width = unary_nchw.shape
    lattices = [crf.build_lattice(crf.gaussian_features(batch, height, width, 3.0, image.device)),
                crf.build_lattice(crf.bilateral_features(image, 67.0, 3.0))]
    unary = unary_nchw.reshape(batch, labels, -1)  # label-major [N, L, P]
    return (unary, crf.PermutohedralLattice.flatten(lattices),
            torch.tensor([3.0, 4.0], device=image.device), groups, 5, "symmetric")


def test_point_groups_only_change_rounding():
    image = photo_batch(2, 40, 52)
    unary = smooth_unary(2, 7, 40, 52)
    ungrouped = ops.dense_crf_mean_field(*_op_args(unary, image))
    tiles = crf.pixel_tiles(2, 40, 52, image.device, tile=16)
    random_groups = torch.randint(0, 50, (2 * 40 * 52,), dtype=torch.int32,
                                  generator=torch.Generator().manual_seed(0))
    for groups in (tiles, random_groups):
        grouped = ops.dense_crf_mean_field(*_op_args(unary, image, groups))
        torch.testing.assert_close(grouped, ungrouped, rtol=0, atol=1e-5)


def cpu_has_avx2_and_fma():
    """Whether the CPU has AVX2 and FMA (from /proc/cpuinfo); None where that cannot be told.
    The AVX2 loops exist on x86-64 only."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    return "avx2" in flags and "fma" in flags


def run_fresh_process(script, inputs, env):
    """Runs `script` in a fresh Python with `env` added to the environment: it gets the path of
    torch.save(inputs) and of its output as argv[1], argv[2]; returns torch.load of the output."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs_path, outputs_path = os.path.join(tmp, "in.pt"), os.path.join(tmp, "out.pt")
        torch.save(inputs, inputs_path)
        subprocess.run([sys.executable, "-c", script, inputs_path, outputs_path], check=True,
                       env=dict(os.environ, **env), cwd=tmp)
        return torch.load(outputs_path)


def test_baseline_build_matches_avx2_build():
    """DEEPLABV2_EXT_CPU_ISA=default selects the baseline (SSE2) loops in a fresh process; this
    process uses the AVX2+FMA loops where the CPU has them. Both selections are asserted, then
    the numbers of the two builds must agree."""
    script = (
        "import sys, torch, deeplabv2_ext\n"
        "from deeplabv2_ext._extension import cpu_isa\n"
        "unary, image = torch.load(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    q = deeplabv2_ext.dense_crf(unary, image, 5)\n"
        "f = deeplabv2_ext.permutohedral_filter(unary.exp(), image.float() / 10.0)\n"
        "torch.save((cpu_isa(), q, f), sys.argv[2])\n")
    image = photo_batch(1, 45, 38)
    unary = smooth_unary(1, 21, 45, 38)
    baseline_isa, baseline, filtered_baseline = run_fresh_process(
        script, (unary, image), {"DEEPLABV2_EXT_CPU_ISA": "default"})
    assert baseline_isa == "baseline"

    has_avx2 = cpu_has_avx2_and_fma()
    if has_avx2 is None:
        pytest.skip("cannot tell whether this CPU has AVX2 and FMA (no /proc/cpuinfo)")
    forced_baseline = os.environ.get("DEEPLABV2_EXT_CPU_ISA") == "default"
    assert cpu_isa() == ("avx2+fma" if has_avx2 and not forced_baseline else "baseline")
    if cpu_isa() != "avx2+fma":
        pytest.skip("this process runs the baseline loops too (no AVX2+FMA on this CPU, or "
                    "DEEPLABV2_EXT_CPU_ISA=default): nothing to compare the baseline with")
    with torch.no_grad():
        here = deeplabv2_ext.dense_crf(unary, image, 5)
    filtered_here = deeplabv2_ext.permutohedral_filter(unary.exp(), image.float() / 10.0)
    torch.testing.assert_close(baseline, here, rtol=0, atol=1e-5)
    torch.testing.assert_close(filtered_baseline, filtered_here, rtol=1e-5, atol=1e-4)


def test_filter_of_ones_is_the_baseline_one_on_every_cpu():
    """The CPU mean-field op's K(1) (the input of its normalisers) runs the baseline loop on
    every CPU: bit for bit the numbers of the code before issue 19, which computed it outside
    the ISA builds (the AVX2+FMA build contracts a*b + c into FMAs: other rounding). In the
    baseline build those are the filter op's numbers for values of ones."""
    image = photo_batch(2, 30, 41)
    lattices = [list(crf.build_lattice(crf.bilateral_features(image, 20.0, 8.0))),
                list(crf.build_lattice(crf.gaussian_features(2, 30, 41, 3.0, image.device)))]
    script = (
        "import sys, torch\n"
        "from deeplabv2_ext import _C\n"
        "from deeplabv2_ext._extension import cpu_isa\n"
        "lattices = torch.load(sys.argv[1])\n"
        "ones = [_C.cpu_filter_ones(lat) for lat in lattices]\n"
        "filtered = [torch.ops.deeplabv2_ext.permutohedral_filter(\n"
        "    torch.ones(*lat[0].shape[:2], 1), lat, False)[..., 0] for lat in lattices]\n"
        "torch.save((cpu_isa(), ones, filtered), sys.argv[2])\n")
    baseline_isa, baseline, filtered = run_fresh_process(script, lattices,
                                                         {"DEEPLABV2_EXT_CPU_ISA": "default"})
    assert baseline_isa == "baseline"
    for lattice, expected, ones_filtered in zip(lattices, baseline, filtered):
        assert torch.equal(expected, ones_filtered)
        assert torch.equal(_C.cpu_filter_ones(lattice), expected), cpu_isa()
    tampered = [t.clone() for t in lattices[0]]
    tampered[crf.PermutohedralLattice._fields.index("vertex_index")][0, 0, 0] = -1
    with pytest.raises(ValueError, match="out of range"):
        _C.cpu_filter_ones(tampered)


def test_lattice_does_not_depend_on_thread_count():
    """Vertices are numbered in key order, not insertion order: the same tensors for any
    number of threads."""
    features = crf.bilateral_features(photo_batch(3, 30, 35), 20.0, 8.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = crf.build_lattice(features)
        torch.set_num_threads(2)
        double = crf.build_lattice(features)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, double):
        assert torch.equal(a, b)


def test_merged_neighbours_equal_hash_lookups():
    """The blur neighbours are found by merging the sorted packed keys; a fresh process with
    DEEPLABV2_EXT_LATTICE_NEIGHBOURS=hash looks them up in the hash table instead: the same
    lattice. Keys too wide to pack (D = 16, large features) take the hash lookups everywhere."""
    if os.environ.get("DEEPLABV2_EXT_LATTICE_NEIGHBOURS") == "hash":
        pytest.skip("DEEPLABV2_EXT_LATTICE_NEIGHBOURS=hash is set here too: nothing to compare")
    g = torch.Generator().manual_seed(3)
    packed = [crf.bilateral_features(photo_batch(2, 33, 41), 13.0, 5.0),
              crf.gaussian_features(1, 29, 31, 2.0, torch.device("cpu")),
              torch.randn(2, 3, 200, generator=g) * 4.0,
              torch.randn(1, 1, 50, generator=g) * 3.0]
    unpacked = [torch.randn(2, 16, 300, generator=g) * 30.0]
    features = packed + unpacked
    script = (
        "import sys, torch\n"
        "from deeplabv2_ext import densecrf as crf\n"
        "from deeplabv2_ext._extension import cpu_lattice_neighbour_searches as searches\n"
        "features = torch.load(sys.argv[1])\n"
        "torch.save([(searches(f), tuple(crf.build_lattice(f))) for f in features], sys.argv[2])\n")
    looked_up = run_fresh_process(script, features, {"DEEPLABV2_EXT_LATTICE_NEIGHBOURS": "hash"})
    for f in packed:
        assert cpu_lattice_neighbour_searches(f) == ["merge"] * f.shape[0]
    for f in unpacked:
        assert cpu_lattice_neighbour_searches(f) == ["hash"] * f.shape[0]
    for f, (searches, reference) in zip(features, looked_up):
        assert searches == ["hash"] * f.shape[0]
        for merged, hashed in zip(crf.build_lattice(f), reference):
            assert torch.equal(merged, hashed)


def test_fused_does_not_depend_on_thread_count():
    """Every vertex sums its points in the same order and every point is updated on its own, so
    the threads (OpenMP, since the build passes -fopenmp) change nothing, not even rounding."""
    image = photo_batch(2, 90, 110)
    unary = smooth_unary(2, 21, 90, 110)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fused_path(unary, image, 4)
        torch.set_num_threads(3)
        several = fused_path(unary, image, 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, several)


def test_blur_neighbours_are_inverse_pairs():
    lattice = crf.build_lattice(crf.bilateral_features(photo_batch(2, 25, 30), 10.0, 6.0))
    neighbours = lattice.blur_neighbors.long()  # [D+1, M, 2]
    vertices = torch.arange(neighbours.shape[1])
    for axis in range(neighbours.shape[0]):
        plus = neighbours[axis, :, 1]
        present = plus >= 0
        assert torch.equal(neighbours[axis, plus[present], 0], vertices[present])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_mean_field(device):
    image = photo_batch(1, 6, 5).to(device)
    unary = smooth_unary(1, 4, 6, 5).to(device)
    args = _op_args(unary, image)
    torch.library.opcheck(ops.dense_crf_mean_field, args)
    matrix_args = list(args)
    matrix_args[2] = torch.randn(2, 4, 4, device=device)
    torch.library.opcheck(ops.dense_crf_mean_field, tuple(matrix_args))


def _bad(args, index, value):
    args = list(args)
    args[index] = value
    return tuple(args)


@pytest.mark.parametrize("device", DEVICES)
def test_mean_field_op_bad_inputs(device):
    image = photo_batch(1, 8, 9).to(device)
    unary = smooth_unary(1, 3, 8, 9).to(device)
    args = _op_args(unary, image)
    cases = [
        (_bad(args, 0, args[0].double()), TypeError, "float32"),
        (_bad(args, 0, args[0][:, :0]), ValueError, "labels"),
        (_bad(args, 0, torch.zeros(1, 300, 72, device=device)), ValueError, "labels"),
        (_bad(args, 0, args[0][..., :10]), ValueError, "does not match"),
        (_bad(args, 0, args[0][0]), ValueError, "3-D"),
        (_bad(args, 1, args[1][:-1]), ValueError, "5 tensors per lattice"),
        (_bad(args, 1, args[1][1:] + args[1][:1]), ValueError, "vertex_index and vertex_weight"),  # shifted
        (_bad(args, 2, torch.tensor([1.0, 2.0, 3.0], device=device)), ValueError, "compatibility"),
        (_bad(args, 2, torch.zeros(2, 3, 4, device=device)), ValueError, "compatibility"),
        (_bad(args, 3, torch.zeros(5, dtype=torch.int32, device=device)), ValueError, "point_groups"),
        (_bad(args, 3, torch.zeros(72, dtype=torch.int64, device=device)), TypeError, "point_groups"),
        (_bad(args, 3, torch.full((72,), 99, dtype=torch.int32, device=device)), ValueError, "point_groups"),
        (_bad(args, 0, args[0].clone().index_fill_(2, torch.tensor([40], device=device), float("nan"))), ValueError, "NaN or Inf"),
        (_bad(args, 0, args[0].clone().index_fill_(1, torch.tensor([2], device=device), -float("inf"))), ValueError, "NaN or Inf"),
        (_bad(args, 4, -1), ValueError, "iterations"),
        (_bad(args, 5, "before"), ValueError, "normalization"),
    ]
    fields = crf.PermutohedralLattice._fields
    tampered_index = [t.clone() for t in args[1]]  # the second lattice's vertex_index
    tampered_index[len(fields) + fields.index("vertex_index")][0, 0, 0] = 10**6
    cases.append((_bad(args, 1, tampered_index), ValueError, "out of range"))
    tampered_neighbours = [t.clone() for t in args[1]]  # the first lattice's blur_neighbors
    tampered_neighbours[fields.index("blur_neighbors")][0, 0, 0] = -5
    cases.append((_bad(args, 1, tampered_neighbours), ValueError, "out of range"))
    for bad_args, error, message in cases:
        with pytest.raises(error, match=message):
            ops.dense_crf_mean_field(*bad_args)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_and_zero_iterations(device):
    image = photo_batch(1, 8, 9).to(device)
    unary = smooth_unary(1, 3, 8, 9).to(device)
    q0 = ops.dense_crf_mean_field(*_bad(_op_args(unary, image), 4, 0))
    torch.testing.assert_close(q0, torch.softmax(_op_args(unary, image)[0], 1), rtol=0,
                               atol=1e-6)
    with torch.no_grad():
        empty = deeplabv2_ext.dense_crf(unary[:0], image[:0], 5)
    assert empty.shape == (0, 3, 8, 9)
