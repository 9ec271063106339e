"""Tests of deeplabv2_ext.dense_crf / DenseCRF against pydensecrf (Krähenbühl's own code).

Inputs are real photographs from skimage.data, cropped/resized to sizes from 1x1 to ~1000x1000,
with realistic unaries: a soft nearest-centre classifier on colour and position (so its class
boundaries follow the image), plus smoothed noise, as log-softmax scores. pydensecrf gets the
same numbers through its public API (see `pydensecrf_marginals`); we require max |dQ| <= 1e-3 and
argmax agreement >= 99.9 %. The measured agreement is printed (pytest -s).
"""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deeplabv2_ext
from deeplabv2_ext import densecrf as crf

import cuda_stream_checks

skimage_data = pytest.importorskip("skimage.data")
from skimage.transform import resize  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

MAX_ABS_DQ = 1e-3
MIN_ARGMAX_AGREEMENT = 0.999

# DeepLab's published settings (bilateral w / sxy / srgb, gaussian w / sxy):
DEFAULTS = dict(bilateral_weight=4.0, bilateral_sxy=67.0, bilateral_srgb=3.0, gaussian_weight=3.0, gaussian_sxy=3.0)
DEEPLAB_V2_VOC = dict(bilateral_weight=4.0, bilateral_sxy=121.0, bilateral_srgb=5.0, gaussian_weight=3.0, gaussian_sxy=3.0)
DEEPLAB_V1 = dict(bilateral_weight=5.0, bilateral_sxy=50.0, bilateral_srgb=3.0, gaussian_weight=3.0, gaussian_sxy=3.0)


# --------------------------------------------------------------------------- inputs
@functools.lru_cache(maxsize=None)
def _photo_full(name):
    return np.ascontiguousarray(getattr(skimage_data, name)()[..., :3])


def photo(name, h, w):
    """[h, w, 3] uint8: the largest centred crop of the photo with aspect w/h, resized."""
    img = _photo_full(name)
    H, W = img.shape[:2]
    if W * h > H * w:  # too wide
        cw = max(1, round(H * w / h))
        x0 = (W - cw) // 2
        img = img[:, x0 : x0 + cw]
    else:
        ch = max(1, round(W * h / w))
        y0 = (H - ch) // 2
        img = img[y0 : y0 + ch]
    if img.shape[:2] != (h, w):
        img = resize(img, (h, w), order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def realistic_unary(img, L, seed=0, temperature=3.0, noise=0.7):
    """[L, H, W] float32 log-probabilities of a plausible (imperfect) segmentation of ``img``:
    a soft nearest-centre classifier on (colour, position) whose centres are L random pixels,
    plus spatially smoothed noise; log_softmax over labels."""
    g = torch.Generator().manual_seed(seed)
    H, W = img.shape[:2]
    rgb = torch.from_numpy(img).float().permute(2, 0, 1).reshape(3, -1) / 255.0
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    size = max(H, W)
    xy = torch.stack([xs, ys]).reshape(2, -1) / size
    feat = torch.cat([rgb / 0.15, xy / 0.35])  # [5, P]
    centres = feat[:, torch.randint(0, H * W, (L,), generator=g)]  # [5, L]
    d2 = (feat.unsqueeze(1) - centres.unsqueeze(2)).pow(2).sum(0)  # [L, P]
    scores = -0.5 * d2.reshape(1, L, H, W)
    n = torch.randn(1, L, H, W, generator=g)
    k = 5 if min(H, W) >= 5 else 1
    n = F.avg_pool2d(n, k, stride=1, padding=k // 2, count_include_pad=False)[..., :H, :W] * (k / 2 if k > 1 else 1)
    logits = temperature * scores + noise * n
    return torch.log_softmax(logits, 1)[0].contiguous()


def hwc_to_nchw(img):
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous()


_NORM = {"symmetric": "NORMALIZE_SYMMETRIC", "after": "NORMALIZE_AFTER", "none": "NO_NORMALIZATION"}


def pydensecrf_marginals(unary, img, iterations, bilateral_weight=4.0, bilateral_sxy=67.0, bilateral_srgb=3.0,
                         gaussian_weight=3.0, gaussian_sxy=3.0, compatibility=None, normalization="symmetric"):
    """What our dense_crf should equal, through pydensecrf's public API: unary [L, H, W] log
    scores (-U), img [H, W, 3] uint8. Gaussian first, then bilateral (our order too)."""
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    L, H, W = unary.shape
    norm = getattr(dcrf, _NORM[normalization])
    d = dcrf.DenseCRF2D(W, H, L)
    d.setUnaryEnergy(np.ascontiguousarray(-np.asarray(unary, dtype=np.float32).reshape(L, -1)))

    def compat(w):
        if compatibility is None:
            return float(w)  # Potts: message -w K(Q)
        return np.ascontiguousarray(np.float32(w) * np.asarray(compatibility, dtype=np.float32))

    if gaussian_weight != 0:
        d.addPairwiseGaussian(sxy=gaussian_sxy, compat=compat(gaussian_weight), normalization=norm)
    if bilateral_weight != 0:
        d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(img),
                               compat=compat(bilateral_weight), normalization=norm)
    return np.array(d.inference(iterations), dtype=np.float32).reshape(L, H, W)


def ours(unary, img, iterations, device="cpu", **params):
    u = torch.as_tensor(unary).unsqueeze(0).to(device)
    im = hwc_to_nchw(img).to(device)
    if params.get("compatibility") is not None:
        params = dict(params, compatibility=torch.as_tensor(params["compatibility"], dtype=torch.float32).to(device))
    with torch.no_grad():
        q = deeplabv2_ext.dense_crf(u, im, iterations, **params)
    return q[0].cpu().numpy()


def agreement(q, ref):
    dq = float(np.abs(q - ref).max()) if q.size else 0.0
    same = float((q.argmax(0) == ref.argmax(0)).mean()) if q.size else 1.0
    return dq, same


def assert_agrees(q, ref, what="", max_dq=MAX_ABS_DQ, min_same=MIN_ARGMAX_AGREEMENT):
    assert q.shape == ref.shape
    assert np.isfinite(q).all()
    dq, same = agreement(q, ref)
    print(f"\n[agreement] {what}: max|dQ| = {dq:.2e}, argmax agreement = {100 * same:.4f} %")
    assert dq <= max_dq, f"{what}: max |dQ| = {dq:.3e} > {max_dq}"
    assert same >= min_same, f"{what}: argmax agreement {same:.6f} < {min_same}"


def potts_like_matrix(L, seed=0):
    """A non-Potts compatibility with pydensecrf's sign: attraction on the diagonal, label-
    dependent (asymmetric, which pydensecrf symmetrises) repulsion/attraction elsewhere."""
    g = np.random.default_rng(seed)
    m = 0.3 * g.standard_normal((L, L)).astype(np.float32)
    m[np.diag_indices(L)] = -1.0
    return m


# --------------------------------------------------------- vs pydensecrf on photographs
CASES = [
    # id, photo, H, W, L, iterations, params
    ("1x1-L2", "astronaut", 1, 1, 2, 10, DEFAULTS),
    ("1x37-L5", "coffee", 1, 37, 5, 10, DEFAULTS),
    ("23x1-L3", "rocket", 23, 1, 3, 5, DEEPLAB_V2_VOC),
    ("7x5-L3", "chelsea", 7, 5, 3, 10, DEFAULTS),
    ("64x48-L21-defaults", "astronaut", 64, 48, 21, 10, DEFAULTS),
    ("64x48-L64-deeplabv2", "coffee", 64, 48, 64, 10, DEEPLAB_V2_VOC),
    ("48x64-L2-deeplabv1", "rocket", 48, 64, 2, 10, DEEPLAB_V1),
    ("90x120-L5-bilateral-off-after", "chelsea", 90, 120, 5, 10, dict(DEFAULTS, bilateral_weight=0.0, normalization="after")),
    ("90x120-L5-gaussian-off", "rocket", 90, 120, 5, 10, dict(DEFAULTS, gaussian_weight=0.0)),
    ("80x80-L21-after", "astronaut", 80, 80, 21, 10, dict(DEEPLAB_V2_VOC, normalization="after")),
    ("80x80-L21-none", "coffee", 80, 80, 21, 5, dict(DEFAULTS, normalization="none", bilateral_weight=0.05, gaussian_weight=0.02)),
    ("96x128-L21-vector", "chelsea", 96, 128, 21, 10, dict(DEFAULTS, bilateral_weight=1.0, gaussian_weight=1.0, compatibility="vector")),
    ("96x128-L5-matrix", "coffee", 96, 128, 5, 10, dict(DEFAULTS, compatibility="matrix")),
    ("70x50-L21-both-off", "astronaut", 70, 50, 21, 10, dict(DEFAULTS, bilateral_weight=0.0, gaussian_weight=0.0)),
    ("60x60-L5-iters0", "chelsea", 60, 60, 5, 0, DEFAULTS),
    ("60x60-L5-iters1", "rocket", 60, 60, 5, 1, DEFAULTS),
    ("321x321-L21-defaults", "astronaut", 321, 321, 21, 10, DEFAULTS),
    ("321x321-L2-deeplabv2", "chelsea", 321, 321, 2, 10, DEEPLAB_V2_VOC),
]


def _resolve(params, L, seed=0):
    c = params.get("compatibility")
    if c == "vector":
        v = -(1.0 + np.random.default_rng(seed).random(L)).astype(np.float32)  # attraction per label
        params = dict(params, compatibility=v)
    elif c == "matrix":
        params = dict(params, compatibility=potts_like_matrix(L, seed))
    return params


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_pydensecrf(case):
    name, photo_name, H, W, L, iters, params = case
    img = photo(photo_name, H, W)
    unary = realistic_unary(img, L, seed=H * 7 + W).numpy()
    params = _resolve(params, L)
    ref = pydensecrf_marginals(unary, img, iters, **params)
    q = ours(unary, img, iters, **params)
    assert_agrees(q, ref, name)
    torch.testing.assert_close(torch.from_numpy(q.sum(0)), torch.ones(H, W), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_matches_pydensecrf_1000x1000():
    img = photo("retina", 1000, 1000)
    unary = realistic_unary(img, 5, seed=3).numpy()
    ref = pydensecrf_marginals(unary, img, 5, **DEEPLAB_V2_VOC)
    q = ours(unary, img, 5, **DEEPLAB_V2_VOC)
    assert_agrees(q, ref, "retina 1000x1000 L5 5 iterations")


def test_constant_colour_image_matches_pydensecrf():
    img = np.full((40, 50, 3), (200, 30, 90), np.uint8)
    unary = realistic_unary(photo("coffee", 40, 50), 4, seed=1).numpy()
    assert_agrees(ours(unary, img, 10, **DEFAULTS), pydensecrf_marginals(unary, img, 10, **DEFAULTS), "constant colour")


def test_log_softmax_equals_unary_from_softmax():
    """dense_crf(log p) == pydensecrf with setUnaryEnergy(unary_from_softmax(p)) (no clipping hit)."""
    utils = pytest.importorskip("pydensecrf.utils")
    img = photo("astronaut", 30, 40)
    logp = realistic_unary(img, 6, seed=5, temperature=1.0)
    p = logp.exp().numpy()
    U = utils.unary_from_softmax(p)
    assert_agrees(ours(logp.numpy(), img, 5), pydensecrf_marginals(-U.reshape(6, 30, 40), img, 5), "log p vs unary_from_softmax")


# ------------------------------------------------------------------- semantics / batch
def test_batch_equals_per_image():
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    imgs = [photo(n, 37, 53) for n in names]
    unary = torch.stack([realistic_unary(im, 7, seed=i) for i, im in enumerate(imgs)])
    image = torch.cat([hwc_to_nchw(im) for im in imgs])
    q = deeplabv2_ext.dense_crf(unary, image, 5)
    for i in range(len(imgs)):
        qi = deeplabv2_ext.dense_crf(unary[i : i + 1], image[i : i + 1], 5)
        torch.testing.assert_close(q[i : i + 1], qi, rtol=0, atol=1e-6)


def test_iterations_zero_is_softmax_and_outputs_are_distributions():
    img = photo("chelsea", 20, 30)
    u = realistic_unary(img, 5).unsqueeze(0)
    im = hwc_to_nchw(img)
    torch.testing.assert_close(deeplabv2_ext.dense_crf(u, im, 0), torch.softmax(u, 1))
    q = deeplabv2_ext.dense_crf(u, im, 10)
    assert q.dtype == torch.float32 and q.shape == u.shape
    assert q.is_contiguous()  # NCHW like the unary (losses such as nll_loss2d need it in backward)
    assert (q >= 0).all() and (q <= 1).all()
    torch.testing.assert_close(q.sum(1), torch.ones(1, 20, 30), atol=1e-5, rtol=0)


def test_gaussian_lattice_is_reused_for_one_size():
    """The Gaussian kernel's lattice depends only on (N, H, W, sxy, device): a second call on an
    image of the same size reuses it, and the result equals a call with a freshly built one."""
    from deeplabv2_ext import densecrf

    img_a, img_b = photo("astronaut", 23, 29), photo("coffee", 23, 29)
    u_a, u_b = realistic_unary(img_a, 4).unsqueeze(0), realistic_unary(img_b, 4).unsqueeze(0)
    densecrf._cached_gaussian_lattice.cache_clear()
    with torch.no_grad():
        first = deeplabv2_ext.dense_crf(u_a, hwc_to_nchw(img_a), 3)
        second = deeplabv2_ext.dense_crf(u_b, hwc_to_nchw(img_b), 3)
        assert densecrf._cached_gaussian_lattice.cache_info().hits == 1
        densecrf._cached_gaussian_lattice.cache_clear()
        fresh = deeplabv2_ext.dense_crf(u_b, hwc_to_nchw(img_b), 3)
        other_size = deeplabv2_ext.dense_crf(u_b[..., :20], hwc_to_nchw(img_b)[..., :20], 3)
    assert torch.equal(second, fresh)
    assert densecrf._cached_gaussian_lattice.cache_info().misses == 2
    assert first.shape == second.shape and other_size.shape == (1, 4, 23, 20)


def test_large_gaussian_lattices_are_not_kept(monkeypatch):
    from deeplabv2_ext import densecrf

    monkeypatch.setattr(densecrf, "_GAUSSIAN_LATTICE_CACHE_POINTS", 23 * 29 - 1)
    densecrf._cached_gaussian_lattice.cache_clear()
    img = photo("chelsea", 23, 29)
    with torch.no_grad():
        deeplabv2_ext.dense_crf(realistic_unary(img, 3).unsqueeze(0), hwc_to_nchw(img), 2)
    assert densecrf._cached_gaussian_lattice.cache_info().currsize == 0


def test_single_label():
    img = photo("coffee", 9, 11)
    q = deeplabv2_ext.dense_crf(torch.randn(2, 1, 9, 11), hwc_to_nchw(img).expand(2, 3, 9, 11), 5)
    torch.testing.assert_close(q, torch.ones(2, 1, 9, 11))


def test_empty_batch():
    q = deeplabv2_ext.dense_crf(torch.zeros(0, 4, 6, 7), torch.zeros(0, 3, 6, 7, dtype=torch.uint8), 3)
    assert q.shape == (0, 4, 6, 7)


def test_uint8_and_float_images_agree_and_unary_shift_invariance():
    img = photo("rocket", 25, 31)
    u = realistic_unary(img, 4).unsqueeze(0)
    a = deeplabv2_ext.dense_crf(u, hwc_to_nchw(img), 5)
    b = deeplabv2_ext.dense_crf(u, hwc_to_nchw(img).float(), 5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = deeplabv2_ext.dense_crf(u + 17.0, hwc_to_nchw(img), 5)  # softmax is shift-invariant per pixel
    torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


def test_weight_equals_compatibility_scaling():
    """weight w with compat M == weight 1 with compat w*M; Potts == compat -I."""
    img = photo("astronaut", 30, 30)
    L = 4
    u = realistic_unary(img, L).unsqueeze(0)
    im = hwc_to_nchw(img)
    potts = deeplabv2_ext.dense_crf(u, im, 5, bilateral_weight=4.0, gaussian_weight=3.0)
    eye = deeplabv2_ext.dense_crf(u, im, 5, bilateral_weight=4.0, gaussian_weight=3.0, compatibility=-torch.eye(L))
    vec = deeplabv2_ext.dense_crf(u, im, 5, bilateral_weight=4.0, gaussian_weight=3.0, compatibility=-torch.ones(L))
    torch.testing.assert_close(potts, eye, rtol=0, atol=1e-6)
    torch.testing.assert_close(potts, vec, rtol=0, atol=1e-6)


def test_module_matches_function():
    img = photo("coffee", 24, 32)
    u = realistic_unary(img, 5).unsqueeze(0)
    im = hwc_to_nchw(img)
    m = deeplabv2_ext.DenseCRF(iterations=4, **DEEPLAB_V2_VOC)
    torch.testing.assert_close(m(u, im), deeplabv2_ext.dense_crf(u, im, 4, **DEEPLAB_V2_VOC))
    t = deeplabv2_ext.DenseCRF(iterations=4, **DEEPLAB_V2_VOC, trainable=True, num_labels=5)
    with torch.no_grad():
        torch.testing.assert_close(t(u, im), deeplabv2_ext.dense_crf(u, im, 4, **DEEPLAB_V2_VOC), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- gradients
def test_gradcheck_unary_float64():
    img = photo("chelsea", 4, 5)
    u = realistic_unary(img, 3, temperature=1.0).double().unsqueeze(0).requires_grad_(True)
    im = hwc_to_nchw(img)
    for norm in ("symmetric", "after", "none"):
        fn = lambda x: deeplabv2_ext.dense_crf(x, im, 3, bilateral_sxy=3.0, bilateral_srgb=20.0, gaussian_sxy=1.0, normalization=norm)  # noqa: E731
        assert fn(u).dtype == torch.float64
        assert torch.autograd.gradcheck(fn, (u,), eps=1e-6, atol=1e-7, rtol=1e-5), norm


def test_gradcheck_weights_and_compatibility_float64():
    img = photo("rocket", 4, 4)
    L = 3
    u = realistic_unary(img, L, temperature=1.0).double().unsqueeze(0).requires_grad_(True)
    im = hwc_to_nchw(img)
    bw = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    gw = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    cm = torch.from_numpy(potts_like_matrix(L)).double().requires_grad_(True)

    def fn(u_, bw_, gw_, cm_):
        return deeplabv2_ext.dense_crf(u_, im, 2, bilateral_weight=bw_, gaussian_weight=gw_, compatibility=cm_,
                                       bilateral_sxy=3.0, bilateral_srgb=20.0, gaussian_sxy=1.0)

    assert torch.autograd.gradcheck(fn, (u, bw, gw, cm), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_trainable_module_gradients():
    img = photo("astronaut", 33, 41)
    L = 5
    m = deeplabv2_ext.DenseCRF(iterations=5, trainable=True, num_labels=L)
    names = {n for n, _ in m.named_parameters()}
    assert {"bilateral_weight", "gaussian_weight", "compatibility"} <= names
    torch.testing.assert_close(m.compatibility.detach(), -torch.eye(L))
    u = realistic_unary(img, L).unsqueeze(0).requires_grad_(True)
    target = torch.randint(0, L, (1, 33, 41))
    loss = F.nll_loss(torch.log(m(u, hwc_to_nchw(img)) + 1e-8), target)
    loss.backward()
    for p in [u, m.bilateral_weight, m.gaussian_weight, m.compatibility]:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.step()  # one training step leaves the module usable
    assert torch.isfinite(m(u.detach(), hwc_to_nchw(img))).all()


@pytest.mark.parametrize("trainable", [False, True])
def test_backward_saved_memory(trainable):
    """What autograd keeps (the documented memory): Q of every iteration, and with a trainable
    compatibility each kernel's filtered Q of every iteration; counted with saved-tensor hooks
    as distinct storages of one N*L*H*W float32 tensor, the unary itself excluded."""
    img = photo("astronaut", 30, 40)
    L, iterations = 5, 4
    u = realistic_unary(img, L).unsqueeze(0).requires_grad_(True)
    module = deeplabv2_ext.DenseCRF(iterations, trainable=trainable, num_labels=L)
    storages = set()

    def pack(t):
        if t.untyped_storage().nbytes() == u.numel() * 4 and t.untyped_storage().data_ptr() != u.data_ptr():
            storages.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(u, hwc_to_nchw(img))
    assert len(storages) <= (iterations + 1) + (2 * iterations if trainable else 0), len(storages)


def test_backward_float32_matches_finite_difference():
    img = photo("coffee", 6, 7)
    L = 4
    u = realistic_unary(img, L, temperature=1.0).unsqueeze(0)
    im = hwc_to_nchw(img)
    w = torch.randn(1, L, 6, 7, dtype=torch.float64)

    def f(x):
        return (deeplabv2_ext.dense_crf(x, im, 3).double() * w).sum()

    x = u.clone().requires_grad_(True)
    f(x).backward()
    direction = torch.randn_like(u)
    eps = 1e-2
    fd = (f(u + eps * direction) - f(u - eps * direction)).item() / (2 * eps)
    an = (x.grad.double() * direction.double()).sum().item()
    assert abs(fd - an) <= 2e-3 * max(1.0, abs(an)), (fd, an)


# ------------------------------------------------------------------------ torch.compile
def _compiled(fn, **kwargs):
    import torch._dynamo

    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=True, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_inference_fullgraph(device):
    """No gradient: the fused loop on the CPU; the compiled graph gives the eager numbers."""
    img = photo("coffee", 21, 26)
    u = realistic_unary(img, 5).unsqueeze(0).to(device)
    im = hwc_to_nchw(img).to(device)
    fn = _compiled(lambda u_, im_: deeplabv2_ext.dense_crf(u_, im_, 4, **DEEPLAB_V2_VOC))
    with torch.no_grad():
        torch.testing.assert_close(fn(u, im), deeplabv2_ext.dense_crf(u, im, 4, **DEEPLAB_V2_VOC),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_trainable_module_fullgraph(device):
    """CRF-as-RNN under torch.compile(fullgraph=True): tensor weights and compatibility stay in
    the graph, forward and gradients equal eager."""
    img = photo("rocket", 17, 23)
    L = 4
    module = deeplabv2_ext.DenseCRF(iterations=3, trainable=True, num_labels=L).to(device)
    with torch.no_grad():
        module.compatibility.add_(0.1 * torch.randn(L, L, generator=torch.Generator().manual_seed(0)).to(device))
    u = realistic_unary(img, L).unsqueeze(0).to(device).requires_grad_(True)
    im = hwc_to_nchw(img).to(device)
    params = [u, module.bilateral_weight, module.gaussian_weight, module.compatibility]
    expected = module(u, im)
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), params)
    got = _compiled(module)(u, im)
    got_grads = torch.autograd.grad(got.pow(2).sum(), params)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_compile_dynamic_shapes():
    """dynamic=True: the fake kernels (the lattice's data-dependent vertex count included) take
    symbolic N, H, W."""
    fn = _compiled(lambda u_, im_: deeplabv2_ext.dense_crf(u_, im_, 3, **DEFAULTS), dynamic=True)
    for n, h, w in [(1, 9, 13), (2, 11, 7), (1, 16, 16)]:
        imgs = [photo(name, h, w) for name in ("astronaut", "chelsea")[:n]]
        u = torch.stack([realistic_unary(img, 3, seed=i) for i, img in enumerate(imgs)])
        im = torch.cat([hwc_to_nchw(img) for img in imgs])
        with torch.no_grad():
            torch.testing.assert_close(fn(u, im), deeplabv2_ext.dense_crf(u, im, 3, **DEFAULTS),
                                       rtol=0, atol=1e-6)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_compile_nan_unary_raises(requires_grad):
    """The NaN/Inf check works in a compiled graph: in the fused op without gradients, else an
    assert op (not a host branch)."""
    u, im = _good()
    fn = _compiled(lambda u_, im_: deeplabv2_ext.dense_crf(u_, im_, 2))
    u[0, 1, 2, 3] = float("nan")
    with pytest.raises((RuntimeError, ValueError), match="NaN or Inf"):
        fn(u.requires_grad_(requires_grad), im)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_permutohedral_filter_fullgraph(device):
    g = torch.Generator().manual_seed(3)
    values = torch.randn(2, 3, 6, 7, generator=g).to(device).requires_grad_(True)
    features = (4 * torch.randn(2, 4, 6, 7, generator=g)).to(device)
    expected = deeplabv2_ext.permutohedral_filter(values, features, "symmetric")
    (expected_grad,) = torch.autograd.grad(expected.pow(2).sum(), values)
    got = _compiled(lambda v, f: deeplabv2_ext.permutohedral_filter(v, f, "symmetric"))(values, features)
    (got_grad,) = torch.autograd.grad(got.pow(2).sum(), values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad inputs
def _good():
    return torch.zeros(1, 3, 5, 6), torch.zeros(1, 3, 5, 6, dtype=torch.uint8)


@pytest.mark.parametrize(
    "mutate,exc",
    [
        (lambda u, im: (u, im[:, :, :4]), (ValueError,)),  # H mismatch
        (lambda u, im: (u, im[:, :2]), (ValueError,)),  # 2 channels
        (lambda u, im: (u[:1].expand(2, 3, 5, 6), im), (ValueError,)),  # N mismatch
        (lambda u, im: (u.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), im), (ValueError,)),
        (lambda u, im: (u.clone().fill_(float("inf")), im), (ValueError,)),
        (lambda u, im: (u[:, :0], im), (ValueError,)),  # L = 0
        (lambda u, im: (u[0], im), (ValueError,)),  # 3-D unary
        (lambda u, im: (u.long(), im), (TypeError,)),
        (lambda u, im: (u, im.float().index_put_((torch.tensor([0]),), torch.tensor(float("nan")))), (ValueError,)),
    ],
    ids=["size", "channels", "batch", "nan", "inf", "L0", "dims", "int-unary", "nan-image"],
)
def test_bad_inputs(mutate, exc):
    u, im = mutate(*_good())
    with pytest.raises(exc):
        deeplabv2_ext.dense_crf(u, im, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"iterations": -1},
        {"bilateral_sxy": 0.0},
        {"bilateral_srgb": -3.0},
        {"gaussian_sxy": 0.0},
        {"normalization": "before-ish"},
        {"compatibility": torch.zeros(4, 4)},  # L = 3
    ],
)
def test_bad_parameters(kwargs):
    u, im = _good()
    with pytest.raises(ValueError):
        deeplabv2_ext.dense_crf(u, im, **kwargs)


def test_trainable_needs_num_labels():
    with pytest.raises(ValueError):
        deeplabv2_ext.DenseCRF(trainable=True)


@pytest.mark.cuda
def test_different_devices_raise():
    u, im = _good()
    with pytest.raises((ValueError, RuntimeError)):
        deeplabv2_ext.dense_crf(u.cuda(), im, 3)


# --------------------------------------------------------------------------------- CUDA
# Label counts past 64 exercise the CUDA mean-field op's wide rows (up to kMeanFieldMaxLabels =
# 256 labels run fused; 257 falls back to the loop of filter ops).
CUDA_VS_CPU = [(1, 1, 2, DEFAULTS), (7, 5, 3, DEFAULTS), (97, 131, 21, DEFAULTS), (321, 321, 21, DEEPLAB_V2_VOC),
               (64, 48, 64, dict(DEFAULTS, normalization="after")), (40, 30, 65, DEFAULTS),
               (33, 29, 256, DEEPLAB_V2_VOC), (21, 17, 257, DEFAULTS)]


@pytest.mark.cuda
@pytest.mark.parametrize("H,W,L,params", CUDA_VS_CPU)
def test_cuda_matches_cpu(H, W, L, params):
    img = photo("astronaut", H, W)
    unary = realistic_unary(img, L, seed=1).numpy()
    cpu = ours(unary, img, 10, "cpu", **params)
    gpu = ours(unary, img, 10, "cuda", **params)
    dq, same = agreement(gpu, cpu)
    print(f"\n[cuda vs cpu] {H}x{W} L{L}: max|dQ| = {dq:.2e}, argmax agreement {100 * same:.4f} %")
    assert np.isfinite(gpu).all() and dq <= 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("H,W,L,params", CUDA_VS_CPU[:5])
def test_cuda_matches_pydensecrf(H, W, L, params):
    pytest.importorskip("pydensecrf.densecrf")
    img = photo("astronaut", H, W)
    unary = realistic_unary(img, L, seed=1).numpy()
    assert_agrees(ours(unary, img, 10, "cuda", **params), pydensecrf_marginals(unary, img, 10, **params),
                  f"cuda vs pydensecrf {H}x{W} L{L}")


@pytest.mark.cuda
def test_cuda_batch_and_backward():
    imgs = [photo(n, 64, 80) for n in ("astronaut", "coffee", "chelsea")]
    u = torch.stack([realistic_unary(im, 6, seed=i) for i, im in enumerate(imgs)])
    image = torch.cat([hwc_to_nchw(im) for im in imgs])
    cpu = deeplabv2_ext.dense_crf(u, image, 5)
    ug = u.cuda().requires_grad_(True)
    gpu = deeplabv2_ext.dense_crf(ug, image.cuda(), 5)
    torch.testing.assert_close(gpu.detach().cpu(), cpu, rtol=0, atol=1e-4)
    gpu.pow(2).sum().backward()
    uc = u.clone().requires_grad_(True)
    deeplabv2_ext.dense_crf(uc, image, 5).pow(2).sum().backward()
    torch.testing.assert_close(ug.grad.cpu(), uc.grad, rtol=1e-3, atol=1e-4)


# The CUDA lattice numbers its vertices in hash-table slot order, which the concurrent insertion
# makes schedule-dependent: it is compared with the CPU op's through the bijection of the two
# numberings (tests/cuda_on_cpu/test_densecrf_device.py, which runs the same kernels on the CPU).
def lattice_features():
    """name -> features [N, D, P]: the CRF's two kernels on a photograph, random points of other
    dimensions, a batch."""
    img = torch.from_numpy(photo("chelsea", 37, 53)).permute(2, 0, 1).unsqueeze(0)
    g = torch.Generator().manual_seed(5)
    return {
        "bilateral_D5": crf.bilateral_features(img, 67.0, 3.0),
        "gaussian_D2": crf.gaussian_features(1, 37, 53, 3.0, torch.device("cpu")),
        "random_D1": 3 * torch.randn(1, 1, 500, generator=g),
        "random_D3_batch2": 2 * torch.randn(2, 3, 700, generator=g),
        "random_D16": torch.randn(1, 16, 300, generator=g),
    }


def renumbered(lattice, permutation):
    """``lattice`` (CPU) with vertex i renamed permutation[i]: what another numbering of the same
    lattice looks like (neighbours and splat plan follow the new names)."""
    index = permutation[lattice.vertex_index.long()]
    neighbors = torch.full_like(lattice.blur_neighbors, -1)
    has = lattice.blur_neighbors >= 0
    neighbors[:, permutation] = torch.where(has, permutation[lattice.blur_neighbors.long().clamp(min=0)], -1).int()
    flat = index.flatten()
    counts = torch.bincount(flat, minlength=permutation.numel())
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    entries = torch.sort(flat, stable=True).indices
    return crf.PermutohedralLattice(index.int(), lattice.vertex_weight.clone(), neighbors, offsets.int(),
                                    entries.int())


def test_lattice_comparison_accepts_a_renumbering_and_catches_regrouping():
    """The check the CUDA lattice tests use (assert_same_lattice) passes another numbering of the
    CPU lattice and fails a merged vertex or a weight one ulp off (runs without a GPU)."""
    from cuda_on_cpu.test_densecrf_device import assert_same_lattice

    cpu = crf.build_lattice(lattice_features()["bilateral_D5"])
    M = cpu.blur_neighbors.shape[1]
    other = renumbered(cpu, torch.randperm(M, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(other.vertex_index, cpu.vertex_index)
    assert_same_lattice(cpu, other)
    merged = other._replace(vertex_index=torch.where(other.vertex_index == 1, 0, other.vertex_index))
    with pytest.raises(AssertionError):
        assert_same_lattice(cpu, merged)
    weights = other.vertex_weight.clone()
    weights.view(-1)[7] = torch.nextafter(weights.view(-1)[7], torch.tensor(2.0))
    with pytest.raises(AssertionError, match="weights"):
        assert_same_lattice(cpu, other._replace(vertex_weight=weights))


def _on_host(lattice):
    return crf.PermutohedralLattice(*(t.cpu() for t in lattice))


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(lattice_features()))
def test_cuda_lattice_equals_cpu_lattice(name):
    """The CUDA embedding is bit-identical to the CPU one: the same vertex count, the same grouping
    of points into vertices (no duplicate hash keys), bitwise equal barycentric weights, the same
    neighbours and splat lists."""
    from cuda_on_cpu.test_densecrf_device import assert_same_lattice

    features = lattice_features()[name]
    assert_same_lattice(crf.build_lattice(features), _on_host(crf.build_lattice(features.cuda())))


@pytest.mark.cuda
@pytest.mark.parametrize("points", [63, 64, 65, 127, 128, 129])
def test_cuda_vertex_lists_at_the_splat_chunk_edges(points):
    """All points equal: each vertex list holds exactly ``points`` entries, around the CUDA
    splat's chunks of kSplatBlock = 64 entries; lattice and filter match the CPU op."""
    from cuda_on_cpu.test_densecrf_device import assert_same_lattice

    features = torch.full((1, 5, points), 3.25)
    cpu = crf.build_lattice(features)
    gpu = _on_host(crf.build_lattice(features.cuda()))
    assert_same_lattice(cpu, gpu)
    assert int(torch.diff(gpu.splat_offsets).max()) == points
    values = torch.randn(1, points, 3, dtype=torch.float64)
    for reverse in (False, True):
        expected = cpu.filter_points(values, reverse)
        got = crf.build_lattice(features.cuda()).filter_points(values.cuda(), reverse).cpu()
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("compatibility", ["potts", "matrix", "gradient"])
def test_cuda_dense_crf_is_bitwise_reproducible(compatibility):
    """Two runs give bitwise equal Q although the vertex numbering may change between builds:
    the splat sums do not depend on it (fused loop with Potts weights or a matrix through cuBLAS,
    and the loop of filter ops that gradients take)."""
    img = hwc_to_nchw(photo("coffee", 61, 83)).cuda()
    L = 6
    u = realistic_unary(photo("coffee", 61, 83), L, seed=2).unsqueeze(0).cuda()
    params = dict(DEEPLAB_V2_VOC)
    if compatibility == "matrix":
        params["compatibility"] = torch.from_numpy(potts_like_matrix(L)).cuda()

    def run():
        crf._cached_gaussian_lattice.cache_clear()  # rebuild the Gaussian lattice too
        if compatibility != "gradient":
            with torch.no_grad():
                return (deeplabv2_ext.dense_crf(u, img, 5, **params),)
        leaf = u.clone().requires_grad_(True)
        q = deeplabv2_ext.dense_crf(leaf, img, 5, **params)
        return (q.detach(), *torch.autograd.grad(q.square().sum(), leaf))

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("schedule", cuda_stream_checks.SCHEDULES)
@pytest.mark.parametrize("compatibility", ["potts", "matrix"])
def test_cuda_runs_on_the_current_stream(schedule, compatibility):
    """The lattice build, the filter (both directions) and the fused mean-field loop (its filter
    launches, cuBLAS GEMM and softmax) enqueue all their work on the current stream: on a side
    stream, under schedules where a launch on another stream reads unwritten inputs or misses
    the host read (tests/cuda_stream_checks.py), they give the default stream's results: bitwise,
    but for the matrix's GEMM (cuBLAS may pick another algorithm while two streams are active)."""
    # Inputs no other run used: a result left in recycled memory cannot pass for a late one.
    seed = cuda_stream_checks.SCHEDULES.index(schedule) + (10 if compatibility == "matrix" else 0)
    img = photo(("coffee", "rocket")[seed % 2], 45, 61)
    L = 5
    unary = realistic_unary(img, L, seed=seed).unsqueeze(0).cuda()
    image = hwc_to_nchw(img).cuda()
    values = torch.randn(1, 45 * 61, 3, generator=torch.Generator().manual_seed(seed)).cuda()
    params = dict(DEFAULTS)
    if compatibility == "matrix":
        params["compatibility"] = torch.from_numpy(potts_like_matrix(L, seed)).cuda()

    def crf_ops(unary, image, values):
        crf._cached_gaussian_lattice.cache_clear()  # build the Gaussian lattice here too
        lattice = crf.build_lattice(crf.bilateral_features(image, 30.0, 10.0))
        return (lattice.vertex_weight, lattice.filter_points(values), lattice.filter_points(values, True),
                deeplabv2_ext.dense_crf(unary, image, 4, **params))

    with torch.no_grad():
        expected = [t.cpu() for t in crf_ops(unary, image, values)]
        got = cuda_stream_checks.run_on_side_stream(schedule, crf_ops, (unary, image, values),
                                                     host_syncs=True)
    crf._cached_gaussian_lattice.cache_clear()  # built on the side stream: not for later tests
    for name, g, e in zip(("vertex_weight", "filter", "filter reverse", "dense_crf"), got, expected):
        tolerance = 1e-5 if name == "dense_crf" and compatibility == "matrix" else 0.0
        torch.testing.assert_close(g, e, rtol=0, atol=tolerance, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_4000x3000():
    """A 12-megapixel photograph (72 million bilateral lattice entries): matches the CPU op."""
    img = np.ascontiguousarray(resize(_photo_full("coffee"), (3000, 4000), order=1, preserve_range=True).astype(np.uint8))
    L = 21
    u = realistic_unary(photo("coffee", 300, 400), L).unsqueeze(0)
    u = F.interpolate(u, size=(3000, 4000), mode="bilinear", align_corners=False)
    image = hwc_to_nchw(img)
    with torch.no_grad():
        q = deeplabv2_ext.dense_crf(u.cuda(), image.cuda(), 10, **DEEPLAB_V2_VOC)
        expected = deeplabv2_ext.dense_crf(u, image, 10, **DEEPLAB_V2_VOC).cuda()
    assert q.shape == (1, L, 3000, 4000) and torch.isfinite(q).all()
    dq = (q - expected).abs().max().item()
    same = (q.argmax(1) == expected.argmax(1)).double().mean().item()
    print(f"\n[cuda vs cpu] 3000x4000 L{L}: max|dQ| = {dq:.2e}, argmax agreement {100 * same:.4f} %")
    assert dq <= MAX_ABS_DQ and same >= MIN_ARGMAX_AGREEMENT


@pytest.mark.cuda
def test_cuda_too_many_lattice_entries_raise():
    """More than 2^29 lattice entries N * P * (D + 1) (kLatticeMaxEntries): the CUDA lattice and
    filter ops raise a clear error instead of overflowing their 32-bit indices. Expanded
    (stride-0) inputs keep this cheap: the ops check the count before they allocate (the
    lattice op's finiteness check of the features still makes a 1 GiB temporary)."""
    points = 2**28 + 1  # D = 1: 2 * points = 2^29 + 2 entries
    features = torch.zeros(1, 1, 1, device="cuda").expand(1, 1, points)
    with pytest.raises(ValueError, match="lattice entries exceed the supported"):
        torch.ops.deeplabv2_ext.permutohedral_lattice(features)
    int_zeros = torch.zeros(1, 1, 1, dtype=torch.int32, device="cuda")
    lattice = (int_zeros.expand(1, points, 2), torch.zeros(1, 1, 1, device="cuda").expand(1, points, 2),
               torch.full((2, 1, 2), -1, dtype=torch.int32, device="cuda"),
               torch.tensor([0, 2 * points], dtype=torch.int32, device="cuda"),
               torch.zeros(1, dtype=torch.int32, device="cuda").expand(2 * points))
    with pytest.raises(ValueError, match="lattice entries exceed the supported"):
        torch.ops.deeplabv2_ext.permutohedral_filter(torch.zeros(1, 1, 1, device="cuda").expand(1, points, 1),
                                                     list(lattice), False)
    torch.cuda.empty_cache()
