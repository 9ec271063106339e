"""The permutohedral CUDA launchers (lattice build + finish, filter, the mean-field op's filter
launches) run on the CPU through the CUDA-on-CPU layer, against the CPU ops on the same inputs.

The CUDA lattice numbers its vertices in hash-table slot order, which the concurrent insertion
makes schedule-dependent: lattices are compared through the bijection between the two
numberings (same grouping of entries into vertices, same neighbours, same splat lists), the
weights bit for bit; sums must not depend on the numbering (bitwise equal across schedules)."""
from __future__ import annotations

import pytest
import torch

from test_permutohedral import image_like_features

from . import device_ops as ops

OPS = torch.ops.deeplabv2_ext


def cpu_lattice(features: torch.Tensor) -> ops.Lattice:
    return ops.Lattice(*OPS.permutohedral_lattice(features.contiguous()))


def numbering_map(cpu: ops.Lattice, dev: ops.Lattice) -> torch.Tensor:
    """dev_id[cpu_id]: asserts the two lattices group the entries into the same vertices."""
    c = cpu.vertex_index.flatten().long()
    d = dev.vertex_index.flatten().long()
    M = cpu.blur_neighbors.shape[1]
    assert dev.blur_neighbors.shape[1] == M, f"vertex count {dev.blur_neighbors.shape[1]} != CPU {M}"
    assert (d >= 0).all() and (d < M).all()
    pairs = torch.unique(torch.stack([c, d]), dim=1)
    assert pairs.shape[1] == M, "the device splits or merges vertices of the CPU lattice (duplicate keys?)"
    mapping = torch.full((M,), -1, dtype=torch.long)
    mapping[pairs[0]] = pairs[1]
    assert torch.equal(torch.sort(mapping).values, torch.arange(M))
    return mapping


def assert_same_lattice(cpu: ops.Lattice, dev: ops.Lattice) -> None:
    mapping = numbering_map(cpu, dev)
    assert torch.equal(dev.vertex_weight, cpu.vertex_weight), "barycentric weights differ from the CPU op's"
    # Neighbours: dev_nb[j, mapping[i]] == mapping(cpu_nb[j, i]) (-1 stays -1).
    mapped = torch.where(cpu.blur_neighbors >= 0, mapping[cpu.blur_neighbors.long().clamp(min=0)], -1)
    expected = torch.empty_like(mapped)
    expected[:, mapping] = mapped
    assert torch.equal(dev.blur_neighbors.long(), expected), "blur neighbours differ"
    # Splat plan: the entries of each vertex, in increasing entry order (a stable sort by vertex).
    order = torch.sort(dev.vertex_index.flatten().long(), stable=True).indices
    assert torch.equal(dev.splat_entries.long(), order), "splat_entries is not the stable sort by vertex"
    counts = torch.bincount(dev.vertex_index.flatten().long(), minlength=mapping.numel())
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    assert torch.equal(dev.splat_offsets.long(), offsets), "splat_offsets do not delimit the vertex lists"


def random_features(N: int, D: int, P: int, scale: float = 2.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D, P, generator=g) * scale).contiguous()


FEATURE_CASES = {
    "D1": random_features(1, 1, 40),
    "D2": random_features(1, 2, 90, seed=1),
    "D3": random_features(2, 3, 50, seed=2),
    "D4": random_features(1, 4, 60, seed=3),
    "D5_image_batch3": image_like_features(3, 6, 7, sxy=2.0, srgb=20.0, seed=4),
    "D8": random_features(1, 8, 40, seed=5),
    "D16": random_features(1, 16, 24, seed=6),
    "D2_gaussian_grid": image_like_features(1, 9, 11, sxy=3.0),
    "D2_two_scan_tiles": random_features(1, 2, 1200, scale=4.0, seed=13),  # 8192 slots, 5 blocks
    "D5_batch2_same_image": image_like_features(1, 12, 14, sxy=2.0, srgb=9.0, seed=14).expand(2, 5, 168).contiguous(),
}


@pytest.mark.parametrize("name", list(FEATURE_CASES))
def test_lattice_matches_cpu(asan_device, name):
    features = FEATURE_CASES[name]
    dev, result, overflow = ops.lattice(asan_device, features)
    assert overflow == 0
    assert_same_lattice(cpu_lattice(features), dev)
    names = result.kernels()
    D = features.shape[1]
    expected_insert = f"lattice_embed_insert_kernel<{D if D in (2, 3, 5) else 0}>"
    assert any(expected_insert in k for k in names), names


@pytest.mark.parametrize("points", [63, 64, 65, 127, 128, 129])
def test_constant_colour_long_vertex_lists(asan_device, points):
    """All points equal: every vertex list holds all `points` entries (the splat's chunk edges)."""
    features = torch.full((1, 5, points), 3.25)
    dev, _, _ = ops.lattice(asan_device, features)
    cpu = cpu_lattice(features)
    assert_same_lattice(cpu, dev)
    assert int(torch.diff(dev.splat_offsets).max()) == points
    values = torch.randn(1, points, 3, dtype=torch.float64)
    out, _ = ops.filter_(asan_device, values, dev)
    expected = OPS.permutohedral_filter(values, list(cpu), False)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lattice_schedules_and_numbering_independence(race_device, seed):
    """Concurrent hash insertion under seeded schedules (race build): no duplicate keys, the
    same lattice up to numbering, and filter sums that do not depend on the numbering."""
    features = image_like_features(2, 8, 9, sxy=2.0, srgb=15.0, seed=7)
    dev, _, overflow = ops.lattice(race_device, features, seed=seed)
    assert overflow == 0
    cpu = cpu_lattice(features)
    assert_same_lattice(cpu, dev)
    values = torch.randn(2, 72, 4, generator=torch.Generator().manual_seed(0))
    out, _ = ops.filter_(race_device, values, dev, seed=seed)
    reference_numbering, _, _ = ops.lattice(race_device, features, seed=0)
    reference_out, _ = ops.filter_(race_device, values, reference_numbering)
    assert torch.equal(out, reference_out), "the filter's sums depend on the vertex numbering"


def test_schedules_change_the_numbering(race_device):
    """The schedule test above bites: different schedules do number the vertices differently."""
    features = image_like_features(2, 8, 9, sxy=2.0, srgb=15.0, seed=7)
    numberings = {tuple(ops.lattice(race_device, features, seed=s)[0].vertex_index.flatten().tolist()) for s in range(4)}
    assert len(numberings) > 1


@pytest.mark.parametrize("capacity", [64, 128])
def test_full_hash_table_is_reported(asan_device, race_device, capacity):
    """More distinct keys than slots: the build must flag it (the glue then raises), never
    loop or write out of bounds."""
    features = random_features(1, 3, 200, scale=5.0, seed=8)
    for dev in (asan_device, race_device):
        lattice, _, overflow = ops.lattice(dev, features, hash_capacity=capacity, expect_success=True)
        assert overflow == 1 and lattice is None


def test_empty_hash_capacity_must_be_a_power_of_two(asan_device):
    with pytest.raises(AssertionError, match="cudaError 1"):
        ops.lattice(asan_device, random_features(1, 2, 10), hash_capacity=96)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("V", [1, 3, 21])
@pytest.mark.parametrize("reverse", [False, True])
def test_filter_matches_cpu(asan_device, dtype, V, reverse):
    features = image_like_features(2, 7, 8, sxy=2.0, srgb=12.0, seed=9)
    dev, _, _ = ops.lattice(asan_device, features)
    values = torch.randn(2, 56, V, dtype=dtype, generator=torch.Generator().manual_seed(V))
    out, result = ops.filter_(asan_device, values, dev, reverse=reverse)
    expected = OPS.permutohedral_filter(values, list(cpu_lattice(features)), reverse)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    kernels = result.kernels()
    for name in ("splat_blocks_kernel", "splat_lists_kernel", "blur_kernel", "slice_kernel"):
        assert any(name in k for k in kernels), kernels


def test_filter_reverse_is_the_adjoint(asan_device):
    features = random_features(1, 3, 70, seed=10)
    dev, _, _ = ops.lattice(asan_device, features)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 70, 2, dtype=torch.float64, generator=g)
    y = torch.randn(1, 70, 2, dtype=torch.float64, generator=g)
    kx, _ = ops.filter_(asan_device, x, dev)
    kty, _ = ops.filter_(asan_device, y, dev, reverse=True)
    assert abs((kx * y).sum().item() - (x * kty).sum().item()) <= 1e-12 * abs((kx * y).sum().item())


def test_filter_traps_on_a_bad_plan(asan_device):
    features = random_features(1, 2, 30, seed=11)
    dev, _, _ = ops.lattice(asan_device, features)
    bad = dev._replace(splat_offsets=dev.splat_offsets.clone().index_fill_(0, torch.tensor([0]), 1))
    with pytest.raises(AssertionError, match="__trap"):
        ops.filter_(asan_device, torch.randn(1, 30, 2), bad)


# ------------------------------------------------------------------------------ mean field
def device_mean_field(dev, unary: torch.Tensor, lattices: list[ops.Lattice], potts: list[float], iterations: int,
                      normalization: str, seed: int = 0) -> torch.Tensor:
    """The loop of dense_crf_mean_field_cuda (permutohedral_cuda.cpp) with its filter launches
    on the device: per kernel the filter of ones and from it the splat and slice weights of
    mean_field_scales (the normaliser of the permutohedral_normalizer op, the slice constant
    and the Potts weight); per iteration energy = unary + sum_k slice(blur(splat(Q)));
    Q = softmax(energy). Its ATen parts (softmax, the copies) run in torch here."""
    N, L, P = unary.shape
    weights = []
    for lat, w in zip(lattices, potts):
        vw = lat.vertex_weight
        D = vw.shape[2] - 1
        alpha = torch.tensor(1.0) / (1.0 + 2.0 ** -D)  # slice_alpha(D) in float32
        if normalization == "none":
            weights.append((vw, vw * (alpha * w)))
            continue
        response, _ = ops.filter_(dev, torch.ones(N, P, 1), lat, seed=seed)
        scale = OPS.permutohedral_normalizer(response, normalization)
        splat = (vw * scale).contiguous() if normalization == "symmetric" else vw
        weights.append((splat, (vw * (scale * alpha * w)).contiguous()))
    unary_points = unary.transpose(1, 2).contiguous()
    q = torch.softmax(unary_points, -1)
    for _ in range(iterations):
        energy = unary_points.clone()
        for lat, (splat_w, slice_w) in zip(lattices, weights):
            energy, _ = ops.filter_(dev, q, lat, splat_weight=splat_w, slice_weight=slice_w,
                                    accumulate_into=energy, seed=seed)
        q = torch.softmax(energy, -1)
    return q.transpose(1, 2)


@pytest.mark.parametrize("normalization", ["symmetric", "after", "none"])
def test_mean_field_matches_cpu_op(asan_device, normalization):
    N, H, W, L = 2, 6, 7, 5
    gaussian = image_like_features(N, H, W, sxy=3.0)
    bilateral = image_like_features(N, H, W, sxy=2.0, srgb=13.0, seed=12)
    unary = torch.randn(N, L, H * W, generator=torch.Generator().manual_seed(3))
    potts = [3.0, 5.0]
    dev_lattices = [ops.lattice(asan_device, f)[0] for f in (gaussian, bilateral)]
    q = device_mean_field(asan_device, unary, dev_lattices, potts, 3, normalization)
    cpu = [cpu_lattice(f) for f in (gaussian, bilateral)]
    expected = OPS.dense_crf_mean_field(unary, ops.Lattice.flatten(cpu), torch.tensor(potts), None, 3,
                                        normalization)
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-6)
