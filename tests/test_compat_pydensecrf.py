"""deeplabv2_ext.compat.pydensecrf (the drop-in shim) against the real pydensecrf.

The utils functions must match bit for bit; inference to the same bounds as dense_crf
(max |dQ| <= 1e-3, argmax agreement >= 99.9 %; measured values are printed with -s).
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deeplabv2_ext
from deeplabv2_ext.compat import pydensecrf as shim

skimage_data = pytest.importorskip("skimage.data")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# The real pydensecrf, imported only by the tests that compare with it (they skip without it;
# the others, CUDA tests included, run without it).
@pytest.fixture(scope="module")
def dcrf():
    return pytest.importorskip("pydensecrf.densecrf")


@pytest.fixture(scope="module")
def putils():
    return pytest.importorskip("pydensecrf.utils")


def _img(h, w, name="astronaut"):
    from skimage.transform import resize

    img = getattr(skimage_data, name)()[..., :3]
    img = resize(img, (h, w), order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(np.rint(img).astype(np.uint8))


def _probs(img, L, seed=0):
    """[L, H, W] float32 class probabilities that follow the image (soft nearest colour centre)."""
    rng = np.random.default_rng(seed)
    H, W = img.shape[:2]
    rgb = img.reshape(-1, 3).astype(np.float32) / 255.0
    centres = rgb[rng.integers(0, H * W, L)]
    d2 = ((rgb[None] - centres[:, None]) ** 2).sum(-1) / 0.02
    logits = -d2 + 0.5 * rng.standard_normal(d2.shape)
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).reshape(L, H, W).astype(np.float32)


def _agree(q, ref, what):
    q, ref = np.asarray(q), np.asarray(ref)
    assert q.shape == ref.shape and q.dtype == np.float32
    dq = float(np.abs(q - ref).max())
    same = float((q.argmax(0) == ref.argmax(0)).mean())
    print(f"\n[shim agreement] {what}: max|dQ| = {dq:.2e}, argmax agreement = {100 * same:.4f} %")
    assert dq <= 1e-3 and same >= 0.999, (what, dq, same)


# ------------------------------------------------------------------------------ utils
def test_constants_match(dcrf):
    for name in ["NO_NORMALIZATION", "NORMALIZE_BEFORE", "NORMALIZE_AFTER", "NORMALIZE_SYMMETRIC",
                 "CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL"]:
        assert int(getattr(shim, name)) == int(getattr(dcrf, name)), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale,clip", [(None, 1e-5), (0.7, 1e-5), (1.0, None), (None, None), (0.3, 1e-3)])
def test_unary_from_softmax(dtype, scale, clip, putils):
    p = _probs(_img(13, 17), 5).astype(dtype)
    p[0, 0, 0] = 0.0  # exercises the clipping (inf when clip=None: both give inf)
    with np.errstate(divide="ignore"):
        ours = shim.unary_from_softmax(p, scale=scale, clip=clip)
        ref = putils.unary_from_softmax(p, scale=scale, clip=clip)
    assert ours.dtype == ref.dtype == np.float32 and ours.shape == (5, 13 * 17)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("zero_unsure", [True, False])
@pytest.mark.parametrize("gt_prob", [0.5, 0.9])
def test_unary_from_labels(zero_unsure, gt_prob, putils):
    rng = np.random.default_rng(1)
    n = 4
    labels = rng.integers(0, n + 1 if zero_unsure else n, size=(11, 9))
    ours = shim.unary_from_labels(labels, n, gt_prob, zero_unsure=zero_unsure)
    ref = putils.unary_from_labels(labels, n, gt_prob, zero_unsure=zero_unsure)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    with pytest.raises((ValueError, AssertionError)):
        shim.unary_from_labels(labels, n, 1.0)


@pytest.mark.parametrize("sdims,shape", [((3, 3), (7, 5)), ((2.5, 80), (4, 9)), ((1, 2, 3), (3, 4, 5)), ((5,), (12,))])
def test_create_pairwise_gaussian(sdims, shape, putils):
    ours = shim.create_pairwise_gaussian(sdims, shape)
    ref = putils.create_pairwise_gaussian(sdims, shape)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize(
    "sdims,schan,chdim,img",
    [
        ((80, 80), (13, 13, 13), 2, lambda: _img(10, 12)),
        ((60, 70), 13, 2, lambda: _img(10, 12, "coffee")),
        ((3, 3), (7, 8, 9), 0, lambda: np.ascontiguousarray(np.moveaxis(_img(6, 5), 2, 0))),
        ((5, 5), 10, -1, lambda: _img(6, 5)[..., 0]),  # one channel, no channel axis
        ((1, 2, 3), 4.0, -1, lambda: np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)),
    ],
)
def test_create_pairwise_bilateral(sdims, schan, chdim, img, putils):
    im = img()
    ours = shim.create_pairwise_bilateral(sdims, schan, im, chdim=chdim)
    ref = putils.create_pairwise_bilateral(sdims, schan, im, chdim=chdim)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_two_modules_like_pydensecrf():
    """pydensecrf's two modules, with its names; the package re-exports both."""
    import deeplabv2_ext.compat.pydensecrf.densecrf as ours_densecrf
    import deeplabv2_ext.compat.pydensecrf.utils as ours_utils

    assert shim.densecrf is ours_densecrf and shim.utils is ours_utils
    for name in ["DenseCRF", "DenseCRF2D", "NORMALIZE_SYMMETRIC", "DIAG_KERNEL"]:
        assert getattr(shim, name) is getattr(ours_densecrf, name)
    for name in ["unary_from_softmax", "unary_from_labels", "create_pairwise_gaussian",
                 "create_pairwise_bilateral"]:
        assert getattr(shim, name) is getattr(ours_utils, name)


# -------------------------------------------------------------------------- inference
def _both(dcrf, cls_args, setup, mod_ours=shim, device=None):
    """Run ``setup(d, mod)`` on a pydensecrf object and on ours; returns (ours, theirs)."""
    W_or_N = cls_args
    if len(W_or_N) == 3:
        a = dcrf.DenseCRF2D(*W_or_N)
        b = mod_ours.DenseCRF2D(*W_or_N, device=device)
    else:
        a = dcrf.DenseCRF(*W_or_N)
        b = mod_ours.DenseCRF(*W_or_N, device=device)
    setup(a, dcrf)
    setup(b, mod_ours)
    return b, a


CONFIGS = {
    "readme": dict(g=dict(sxy=3, compat=3), b=dict(sxy=80, srgb=13, compat=10)),
    "deeplab": dict(g=dict(sxy=3, compat=3), b=dict(sxy=121, srgb=5, compat=4)),
    "anisotropic": dict(g=dict(sxy=(2, 5), compat=3), b=dict(sxy=(40, 90), srgb=(10, 13, 20), compat=5)),
    "after": dict(g=dict(sxy=3, compat=3, normalization="NORMALIZE_AFTER"), b=dict(sxy=67, srgb=3, compat=4, normalization="NORMALIZE_AFTER")),
    "before": dict(g=dict(sxy=3, compat=3, normalization="NORMALIZE_BEFORE"), b=dict(sxy=67, srgb=3, compat=4, normalization="NORMALIZE_BEFORE")),
    "none": dict(g=dict(sxy=3, compat=0.05, normalization="NO_NORMALIZATION"), b=dict(sxy=67, srgb=3, compat=0.1, normalization="NO_NORMALIZATION")),
    "kernels": dict(g=dict(sxy=3, compat=3, kernel="CONST_KERNEL"), b=dict(sxy=67, srgb=3, compat=4, kernel="FULL_KERNEL")),
    "vector": dict(g=dict(sxy=3, compat="vector"), b=dict(sxy=67, srgb=3, compat="vector")),
    "matrix": dict(g=dict(sxy=3, compat="matrix"), b=dict(sxy=67, srgb=3, compat="matrix")),
    "gaussian-only": dict(g=dict(sxy=3, compat=3)),
    "mixed-compat": dict(g=dict(sxy=3, compat=3), b=dict(sxy=67, srgb=3, compat="matrix")),
    "mixed-normalization": dict(g=dict(sxy=3, compat=3, normalization="NORMALIZE_AFTER"), b=dict(sxy=67, srgb=3, compat=4)),
}


def _kw(kw, mod, L):
    kw = dict(kw)
    for k in ("normalization", "kernel"):
        if k in kw:
            kw[k] = getattr(mod, kw[k])
    c = kw["compat"]
    if c == "vector":
        kw["compat"] = -np.linspace(1, 5, L).astype(np.float32)
    elif c == "matrix":
        m = 0.5 * np.random.default_rng(0).standard_normal((L, L)).astype(np.float32)
        m[np.diag_indices(L)] = -3.0
        kw["compat"] = m
    return kw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_densecrf2d_inference(config, device, dcrf):
    H, W, L = 48, 64, 6
    img = _img(H, W, "chelsea")
    U = shim.unary_from_softmax(_probs(img, L))
    cfg = CONFIGS[config]

    def setup(d, mod):
        d.setUnaryEnergy(U)
        if "g" in cfg:
            d.addPairwiseGaussian(**_kw(cfg["g"], mod, L))
        if "b" in cfg:
            d.addPairwiseBilateral(rgbim=img, **_kw(cfg["b"], mod, L))

    ours, theirs = _both(dcrf, (W, H, L), setup, device=device)
    q = ours.inference(5)
    assert isinstance(q, np.ndarray) and q.shape == (L, H * W) and q.dtype == np.float32
    _agree(q, np.array(theirs.inference(5)), f"DenseCRF2D {config} on {device}")


def test_cpu_inference_runs_the_fused_loop(monkeypatch):
    """On the CPU, inference is the fused op that dense_crf runs: the same numbers bit for bit,
    and the step-by-step torch loop is not called."""
    H, W, L = 37, 53, 7
    img = _img(H, W, "astronaut")
    p = _probs(img, L, seed=5)

    def fail(*args, **kwargs):
        raise AssertionError("inference fell back to the step-by-step loop")

    monkeypatch.setattr(shim.densecrf._crf, "mean_field", fail)
    d = shim.DenseCRF2D(W, H, L)
    d.setUnaryEnergy(shim.unary_from_softmax(p))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=img, compat=4)
    q = d.inference(6)
    unary = torch.from_numpy(-shim.unary_from_softmax(p)).reshape(1, L, H, W)
    image = torch.from_numpy(img).permute(2, 0, 1)[None]
    expected = deeplabv2_ext.dense_crf(unary, image, 6, bilateral_weight=4.0, bilateral_sxy=67.0,
                                       bilateral_srgb=3.0, gaussian_weight=3.0, gaussian_sxy=3.0)
    np.testing.assert_array_equal(q, expected.reshape(L, H * W).numpy())


def test_generic_densecrf_with_utils_features(dcrf, putils):
    """DenseCRF + addPairwiseEnergy with create_pairwise_* features (the README's 'non-RGB' path),
    including a 3-D volume."""
    H, W, L = 40, 30, 4
    img = _img(H, W, "coffee")
    U = shim.unary_from_softmax(_probs(img, L, seed=2))
    feats_g = putils.create_pairwise_gaussian((3, 3), (H, W))
    feats_b = putils.create_pairwise_bilateral((50, 50), (13, 13, 13), img, chdim=2)

    def setup(d, mod):
        d.setUnaryEnergy(U)
        d.addPairwiseEnergy(feats_g, compat=3)
        d.addPairwiseEnergy(feats_b, compat=10, kernel=mod.DIAG_KERNEL, normalization=mod.NORMALIZE_SYMMETRIC)

    ours, theirs = _both(dcrf, (H * W, L), setup)
    _agree(ours.inference(10), np.array(theirs.inference(10)), "DenseCRF + utils features")

    vol = np.random.default_rng(3).random((6, 7, 8)).astype(np.float32)
    Uv = shim.unary_from_softmax(np.stack([vol, 1 - vol]) * 0.8 + 0.1)
    fv = putils.create_pairwise_bilateral((2, 2, 2), 0.2, vol, chdim=-1)

    def setup3(d, mod):
        d.setUnaryEnergy(Uv)
        d.addPairwiseEnergy(fv, compat=2)

    ours, theirs = _both(dcrf, (vol.size, 2), setup3)
    _agree(ours.inference(5), np.array(theirs.inference(5)), "3-D volume")


def test_step_inference_and_kl(dcrf):
    H, W, L = 30, 40, 5
    img = _img(H, W, "rocket")
    U = shim.unary_from_softmax(_probs(img, L, seed=4))

    def setup(d, mod):
        d.setUnaryEnergy(U)
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=60, srgb=10, rgbim=img, compat=5)

    ours, theirs = _both(dcrf, (W, H, L), setup)
    q, t1, t2 = ours.startInference()
    Q, T1, T2 = theirs.startInference()
    _agree(q, np.array(Q), "startInference")
    kl_ours, kl_theirs = ours.klDivergence(q), theirs.klDivergence(Q)
    assert abs(kl_ours - kl_theirs) <= 1e-4 * abs(kl_theirs), (kl_ours, kl_theirs)
    for it in range(3):
        ours.stepInference(q, t1, t2)
        theirs.stepInference(Q, T1, T2)
        _agree(q, np.array(Q), f"stepInference {it + 1}")
    kl_ours, kl_theirs = ours.klDivergence(q), theirs.klDivergence(Q)
    assert abs(kl_ours - kl_theirs) <= 1e-4 * abs(kl_theirs), (kl_ours, kl_theirs)
    # the steps equal inference(3); tmp1 holds the logits of the last step
    np.testing.assert_allclose(q, ours.inference(3), rtol=0, atol=1e-6)
    logits = t1 - t1.max(0)
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(0), q, rtol=0, atol=1e-5)


def test_no_unary_and_no_pairwise(dcrf):
    d = shim.DenseCRF2D(5, 4, 3)
    d.addPairwiseGaussian(sxy=3, compat=3)
    np.testing.assert_allclose(d.inference(3), np.full((3, 20), 1 / 3, np.float32), atol=1e-6)
    d = shim.DenseCRF(7, 2)
    U = np.random.default_rng(0).random((2, 7)).astype(np.float32)
    d.setUnaryEnergy(U)
    e = dcrf.DenseCRF(7, 2)
    e.setUnaryEnergy(U)
    np.testing.assert_allclose(d.inference(4), np.array(e.inference(4)), atol=1e-6)


def test_bad_inputs():
    d = shim.DenseCRF2D(6, 5, 3)
    with pytest.raises(ValueError):
        d.setUnaryEnergy(np.zeros((3, 29), np.float32))
    with pytest.raises(ValueError):
        d.addPairwiseEnergy(np.zeros((2, 29), np.float32), compat=3)
    with pytest.raises(ValueError):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((6, 5, 3), np.uint8), compat=3)  # H, W swapped
    with pytest.raises(ValueError):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((5, 6, 4), np.uint8), compat=3)
    with pytest.raises(ValueError):
        d.addPairwiseGaussian(sxy=3, compat=np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError):
        d.addPairwiseGaussian(sxy=3, compat=np.zeros(4, np.float32))  # L = 3
    with pytest.raises(ValueError):
        d.addPairwiseGaussian(sxy=3, compat=3, normalization=7)
    with pytest.raises(NotImplementedError):
        d.setUnaryEnergy(np.zeros((3, 30), np.float32), np.zeros((2, 30), np.float32))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    H, W, L = 120, 160, 21
    img = _img(H, W)
    U = shim.unary_from_softmax(_probs(img, L))
    out = []
    for device in ("cpu", "cuda"):
        d = shim.DenseCRF2D(W, H, L, device=device)
        d.setUnaryEnergy(U)
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=img, compat=10)
        out.append(d.inference(10))
    np.testing.assert_allclose(out[1], out[0], rtol=0, atol=1e-4)


# ------------------------------------------------------------------ install(): unchanged clients
CLIENT = Path(__file__).with_name("pydensecrf_client.py")
PYDENSECRF_MODULES = ["pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"]


def _load_client(name):
    """tests/pydensecrf_client.py, imported afresh as module ``name`` (its imports run again)."""
    spec = importlib.util.spec_from_file_location(name, CLIENT)
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client


@pytest.fixture
def installed(monkeypatch):
    """``install`` for one test: sys.modules' pydensecrf entries and the default device are
    restored afterwards."""
    saved = {name: sys.modules.get(name) for name in PYDENSECRF_MODULES}
    monkeypatch.setattr(shim.densecrf, "_default_device", shim.densecrf.default_device())
    yield shim.install
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def test_install_serves_pydensecrf_imports(installed):
    """After install(), the pydensecrf imports of third-party code get our modules (no real
    pydensecrf needed)."""
    installed()
    import pydensecrf
    import pydensecrf.densecrf as dcrf_imported
    import pydensecrf.utils as utils_imported
    from pydensecrf.utils import unary_from_softmax

    # the very modules, not second copies loaded from our files under pydensecrf's names
    assert pydensecrf is sys.modules["deeplabv2_ext.compat.pydensecrf"]
    assert dcrf_imported is sys.modules["deeplabv2_ext.compat.pydensecrf.densecrf"]
    assert utils_imported is sys.modules["deeplabv2_ext.compat.pydensecrf.utils"]
    assert unary_from_softmax is shim.unary_from_softmax
    assert dcrf_imported.DenseCRF2D(4, 3, 2).device == torch.device("cpu")


def test_install_device_is_where_new_crfs_run(installed):
    """install(device=...) sets the device of the CRFs created without one (what third-party
    code does); an explicit device still wins. "meta" stands for a GPU here: no data needed."""
    installed(device="meta")
    import pydensecrf.densecrf as dcrf_imported

    assert dcrf_imported.DenseCRF2D(4, 3, 2).device == torch.device("meta")
    assert dcrf_imported.DenseCRF(12, 2, device="cpu").device == torch.device("cpu")


def test_install_refuses_a_device_this_process_cannot_use(installed):
    """A device that cannot be used here (no such GPU) is an error at install(), not later inside
    third-party code; the default device stays as it was."""
    before = shim.densecrf.default_device()
    with pytest.raises(ValueError, match="'cuda:99' cannot be used here"):
        installed(device="cuda:99")
    assert shim.densecrf.default_device() == before
    assert sys.modules.get("pydensecrf") is not shim  # not installed either


@pytest.mark.parametrize("device", DEVICES)
def test_install_runs_an_unchanged_pydensecrf_client(device, dcrf, installed):
    """tests/pydensecrf_client.py, unchanged, on the real pydensecrf and on ours after
    install(device=...): the same MAP labels wherever pydensecrf's two best labels are not tied
    to float32 rounding."""
    H, W, C = 96, 128, 5
    img = _img(H, W, "coffee")
    probs = _probs(img, C, seed=3)

    theirs_client = _load_client("pydensecrf_client_on_pydensecrf")
    assert theirs_client.dcrf is dcrf  # the real pydensecrf
    theirs = theirs_client.CRFPostProcessor()(img, probs)

    installed(device=device)
    ours_client = _load_client("pydensecrf_client_on_deeplabv2_ext")
    assert ours_client.dcrf is sys.modules["deeplabv2_ext.compat.pydensecrf.densecrf"]
    assert ours_client.utils is sys.modules["deeplabv2_ext.compat.pydensecrf.utils"]
    assert shim.densecrf.default_device() == torch.device(device)
    ours = ours_client.CRFPostProcessor()(img, probs)

    assert ours.shape == theirs.shape == (C, H, W)
    top2 = np.sort(theirs, axis=0)[-2:]
    decided = top2[1] - top2[0] > 1e-4
    labels_ours, labels_theirs = ours.argmax(0), theirs.argmax(0)
    print(f"\n[unchanged client on {device}] {int((~decided).sum())} near-tied pixels of {H * W}, "
          f"{int((labels_ours != labels_theirs).sum())} differing MAP labels in all")
    np.testing.assert_array_equal(labels_ours[decided], labels_theirs[decided])
    assert decided.mean() > 0.99
