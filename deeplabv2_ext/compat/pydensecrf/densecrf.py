"""``pydensecrf.densecrf`` on deeplabv2_ext's DenseCRF: ``DenseCRF``, ``DenseCRF2D`` and the
normalisation and kernel constants (the package :mod:`deeplabv2_ext.compat.pydensecrf` shows
how to use them).

The same names, argument order, defaults, shapes and sign conventions as pydensecrf; the numbers
agree with pydensecrf's to float32 rounding (the lattice is the same). Differences:

- ``inference`` and ``startInference`` return NumPy arrays (pydensecrf returns its Eigen
  wrapper, which callers turn into arrays with ``np.array``; that still works).
- ``stepInference(Q, tmp1, tmp2)`` updates the arrays in place; ``tmp1`` receives the logits
  (-unary - all pairwise messages) and ``tmp2`` the last pairwise message when they have the
  shape [L, N] (``startInference`` returns them so), and are left alone otherwise.
- All four normalisations work (``NORMALIZE_BEFORE`` too, built here from an "after" term).
  The kernel type (CONST/DIAG/FULL) only matters for pydensecrf's parameter learning, which
  is not provided; inference is the same for all three.
- Logistic unaries (``setUnaryEnergy(L, f)``, ``LogisticUnary``) raise ``NotImplementedError``.
- An optional ``device`` (e.g. ``"cuda"``) runs everything there; inputs and outputs stay NumPy.
  Without one, a CRF runs on :func:`default_device` (the CPU unless ``install(device=...)``
  or :func:`set_default_device` chose another).

Each pairwise term's lattice is built when it is added. ``inference`` runs the whole loop in the
fused op :func:`deeplabv2_ext.densecrf.fused_mean_field` (what ``dense_crf`` runs; CPU and CUDA)
when all terms share one normalisation other than NORMALIZE_BEFORE; otherwise, and for the
step-by-step API, it goes through :class:`deeplabv2_ext.densecrf.PairwiseTerm` and
:func:`deeplabv2_ext.densecrf.mean_field`.
"""
from __future__ import annotations

import dataclasses
import enum
from numbers import Number

import numpy as np
import torch

from deeplabv2_ext import densecrf as _crf

__all__ = [
    "DenseCRF",
    "DenseCRF2D",
    "KernelType",
    "NormalizationType",
    "CONST_KERNEL",
    "DIAG_KERNEL",
    "FULL_KERNEL",
    "NO_NORMALIZATION",
    "NORMALIZE_BEFORE",
    "NORMALIZE_AFTER",
    "NORMALIZE_SYMMETRIC",
    "default_device",
    "set_default_device",
]


# Where a CRF created without a ``device`` runs (third-party pydensecrf code never passes one).
_default_device = torch.device("cpu")


def default_device() -> torch.device:
    """The device of the CRFs created without one (the CPU unless changed)."""
    return _default_device


def set_default_device(device: str | torch.device) -> None:
    """Run the CRFs created without a ``device`` on ``device`` (e.g. ``"cuda"``); existing CRFs
    keep theirs.

    Raises:
        ValueError: ``device`` is not usable here (e.g. "cuda" without a GPU): said now, not
            later inside the code that creates the CRFs.
    """
    global _default_device
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # torch's CPU builds assert on "cuda"
        raise ValueError(f"set_default_device: {device!r} cannot be used here: {error}") from error
    _default_device = torch.device(device)


class NormalizationType(enum.IntEnum):
    """pydensecrf's normalisation of a pairwise kernel (same integer values)."""

    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


class KernelType(enum.IntEnum):
    """pydensecrf's kernel parametrisation (same integer values); inference ignores it."""

    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


NO_NORMALIZATION = NormalizationType.NO_NORMALIZATION
NORMALIZE_BEFORE = NormalizationType.NORMALIZE_BEFORE
NORMALIZE_AFTER = NormalizationType.NORMALIZE_AFTER
NORMALIZE_SYMMETRIC = NormalizationType.NORMALIZE_SYMMETRIC
CONST_KERNEL = KernelType.CONST_KERNEL
DIAG_KERNEL = KernelType.DIAG_KERNEL
FULL_KERNEL = KernelType.FULL_KERNEL

_NORMALIZATION_NAMES = {
    NO_NORMALIZATION: "none",
    NORMALIZE_BEFORE: "before",
    NORMALIZE_AFTER: "after",
    NORMALIZE_SYMMETRIC: "symmetric",
}


def _normalization_name(normalization) -> str:
    try:
        return _NORMALIZATION_NAMES[NormalizationType(int(normalization))]
    except (ValueError, TypeError):
        raise ValueError(
            f"normalization must be one of NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, "
            f"NORMALIZE_SYMMETRIC (0..3), got {normalization!r}"
        ) from None


def _check_kernel(kernel) -> None:
    try:
        KernelType(int(kernel))
    except (ValueError, TypeError):
        raise ValueError(f"kernel must be CONST_KERNEL, DIAG_KERNEL or FULL_KERNEL (0..2), got {kernel!r}") from None


def _as_pair(v, n: int, name: str) -> tuple:
    """pydensecrf's ``sxy``/``srgb``: a number is repeated n times, a sequence must have n items."""
    if isinstance(v, Number):
        return (v,) * n
    v = tuple(v)
    if len(v) < n:
        raise ValueError(f"{name} must be a number or a sequence of {n} numbers, got {v!r}")
    return v[:n]


class _NormalizeBeforeTerm(_crf.PairwiseTerm):
    """pydensecrf's NORMALIZE_BEFORE: filter ``K(n * v)`` with ``n = 1 / K(1)`` (the normaliser of
    an "after" term, applied to the input instead of the output)."""

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        # point-major values [N, P, V] and normaliser [N, P, 1], like PairwiseTerm.filter
        return self.lattice.filter_points(values * self.normalizer)


@dataclasses.dataclass
class _Pairwise:
    """A pairwise term as added: its lattice, pydensecrf's compatibility (a Potts weight, an [L]
    vector or an [L, L] matrix) and normalisation name ("before" included)."""

    lattice: _crf.PermutohedralLattice
    compatibility: float | torch.Tensor
    normalization: str
    _term: _crf.PairwiseTerm | None = None

    def term(self, num_labels: int) -> _crf.PairwiseTerm:
        """The term for the step-by-step API (its normaliser is computed on first use)."""
        if self._term is None:
            if self.normalization == "before":
                # K(n * v) with n = 1 / K(1): the "after" normaliser, applied before the filter
                after = _crf.PairwiseTerm.from_lattice(self.lattice, self.compatibility, "after",
                                                       num_labels)
                self._term = _NormalizeBeforeTerm(
                    **{f.name: getattr(after, f.name) for f in dataclasses.fields(after)})
            else:
                self._term = _crf.PairwiseTerm.from_lattice(self.lattice, self.compatibility,
                                                            self.normalization, num_labels)
        return self._term


class DenseCRF:
    """A fully connected CRF over ``n_pixels`` variables with ``n_labels`` labels (pydensecrf's
    ``DenseCRF``). Pairwise terms take arbitrary features through :meth:`addPairwiseEnergy`."""

    def __init__(self, n_pixels: int, n_labels: int, device=None):
        n_pixels, n_labels = int(n_pixels), int(n_labels)
        if n_pixels < 0:
            raise ValueError(f"n_pixels must be >= 0, got {n_pixels}")
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        self._nvar = n_pixels
        self._nlabel = n_labels
        self.device = torch.device(device) if device is not None else default_device()
        self._unary = torch.zeros(1, n_labels, n_pixels, device=self.device)  # log-space (-U)
        self._pairwise: list[_Pairwise] = []

    # ----------------------------------------------------------------------------- setup
    def setUnaryEnergy(self, u, f=None):
        """``u`` [n_labels, n_pixels]: the unary energy U (e.g. -log p, see ``unary_from_softmax``)."""
        if f is not None:
            raise NotImplementedError("logistic unaries (setUnaryEnergy(L, f)) are not supported")
        u = np.asarray(u)
        if u.ndim != 2 or u.shape[0] != self._nlabel or u.shape[1] != self._nvar:
            raise ValueError(
                f"Bad shape for unary energy (Need {(self._nlabel, self._nvar)}, got {tuple(u.shape)})"
            )
        u = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32))
        self._unary = (-u).unsqueeze(0).to(self.device)

    def setUnary(self, u):
        raise NotImplementedError("Unary objects are not supported; pass the energy to setUnaryEnergy")

    def addPairwiseEnergy(self, features, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """A Gaussian pairwise term over ``features`` [D, n_pixels] (already divided by the
        standard deviations). ``compat``: a number (Potts weight w), a vector [L] (diagonal
        compatibility) or a matrix [L, L] (symmetrised), with pydensecrf's sign."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self._nvar:
            raise ValueError(
                f"Bad shape for pairwise energy (Need (?, {self._nvar}), got {tuple(features.shape)})"
            )
        feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self._add_term(feats, compat, kernel, normalization)

    def _add_term(self, feats: torch.Tensor, compat, kernel, normalization) -> None:
        _check_kernel(kernel)
        norm = _normalization_name(normalization)
        compat = self._compat(compat)
        lattice = _crf.build_lattice(feats.unsqueeze(0).to(self.device))
        self._pairwise.append(_Pairwise(lattice, compat, norm))

    def _compat(self, compat):
        if isinstance(compat, Number):
            return float(compat)
        c = np.asarray(compat, dtype=np.float32)
        if c.ndim == 0:
            return float(c)
        if c.ndim == 1:
            if c.shape[0] != self._nlabel:
                raise ValueError(f"a compatibility vector needs {self._nlabel} entries, got {c.shape[0]}")
        elif c.ndim == 2:
            if c.shape != (self._nlabel, self._nlabel):
                raise ValueError(
                    f"a compatibility matrix must be [{self._nlabel}, {self._nlabel}], got {list(c.shape)}"
                )
        else:
            raise ValueError("LabelCompatibility of dimension >2 not meaningful.")
        return torch.from_numpy(np.ascontiguousarray(c)).to(self.device)

    # ------------------------------------------------------------------------- inference
    def inference(self, niter: int) -> np.ndarray:
        """``niter`` mean-field iterations from Q = softmax(-U); returns Q [n_labels, n_pixels]."""
        niter = max(int(niter), 0)
        normalizations = {p.normalization for p in self._pairwise}
        with torch.no_grad():
            if (_crf.fused_mean_field_supports(self.device, self._nlabel)
                    and len(normalizations) <= 1 and "before" not in normalizations):
                # The whole loop in one op (what dense_crf runs).
                q = _crf.fused_mean_field(
                    self._unary, [p.lattice for p in self._pairwise],
                    [p.compatibility if isinstance(p.compatibility, float)
                     else _crf.compatibility_matrix(p.compatibility, self._nlabel, self.device,
                                                    torch.float32)
                     for p in self._pairwise],
                    niter, normalizations.pop() if normalizations else "none",
                    self._point_groups())
            else:
                q = _crf.mean_field(self._unary, self._terms(), niter)
        return self._to_numpy(q)

    def startInference(self):
        """(Q, tmp1, tmp2): Q = softmax(-U) [n_labels, n_pixels] and two work arrays of that shape."""
        with torch.no_grad():
            q = torch.softmax(self._unary, 1)
        shape = (self._nlabel, self._nvar)
        return self._to_numpy(q), np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def stepInference(self, Q, tmp1, tmp2) -> None:
        """One mean-field iteration; updates ``Q`` (and ``tmp1``/``tmp2``, see the module doc) in place."""
        if not isinstance(Q, np.ndarray) or Q.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Q must be a NumPy array of shape {(self._nlabel, self._nvar)}")
        with torch.no_grad():
            q = torch.from_numpy(np.ascontiguousarray(Q, dtype=np.float32)).unsqueeze(0).to(self.device)
            want_tmp = any(isinstance(t, np.ndarray) and t.shape == Q.shape for t in (tmp1, tmp2))
            if want_tmp:
                messages = [self._message(t, q) for t in self._terms()]
                logits = self._unary.clone()
                for m in messages:
                    logits -= m
                q_new = torch.softmax(logits, 1)
                if isinstance(tmp1, np.ndarray) and tmp1.shape == Q.shape:
                    tmp1[...] = self._to_numpy(logits)
                if isinstance(tmp2, np.ndarray) and tmp2.shape == Q.shape and messages:
                    tmp2[...] = self._to_numpy(messages[-1])
            else:
                q_new = _crf.mean_field_step(self._unary, self._terms(), q)
        Q[...] = self._to_numpy(q_new)

    def klDivergence(self, Q) -> float:
        """KL(Q || P) up to the log-partition constant, as pydensecrf computes it."""
        Q = np.asarray(Q, dtype=np.float32)
        if Q.shape != (self._nlabel, self._nvar):
            raise ValueError(f"Q must have shape {(self._nlabel, self._nvar)}, got {Q.shape}")
        with torch.no_grad():
            q = torch.from_numpy(np.ascontiguousarray(Q)).unsqueeze(0).to(self.device).double()
            kl = (q * torch.log(q.clamp_min(1e-20))).sum() - (self._unary.double() * q).sum()
            for t in self._terms():
                kl = kl + (q * self._message(t, q.float()).double()).sum()
        return float(kl)

    def _terms(self) -> list[_crf.PairwiseTerm]:
        return [p.term(self._nlabel) for p in self._pairwise]

    def _point_groups(self) -> torch.Tensor | None:
        """The order the fused loop visits pixels in (None: variable order)."""
        return None

    @staticmethod
    def _message(term, q: torch.Tensor) -> torch.Tensor:
        """pydensecrf's PairwisePotential::apply of Q [1, L, P]: compatibility(kernel(Q)), with
        its sign (the logits are -U - the sum of these). PairwiseTerm works point-major."""
        return term.message(q.transpose(1, 2).contiguous()).transpose(1, 2)

    @staticmethod
    def _to_numpy(q: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(q[0].detach().to("cpu", torch.float32).numpy())


class DenseCRF2D(DenseCRF):
    """A fully connected CRF over a ``width`` x ``height`` image (pydensecrf's ``DenseCRF2D``);
    pixel (x, y) is variable ``y * width + x``."""

    def __init__(self, width: int, height: int, n_labels: int, device=None):
        width, height = int(width), int(height)
        if width < 0 or height < 0:
            raise ValueError(f"width and height must be >= 0, got {width} x {height}")
        super().__init__(width * height, n_labels, device=device)
        self._w = width
        self._h = height

    def _point_groups(self) -> torch.Tensor | None:
        """64 x 64 pixel tiles, the order ``dense_crf`` uses on the CPU (keeps the loop's reads
        local)."""
        if self.device.type != "cpu":
            return None
        return _crf.pixel_tiles(1, self._h, self._w, self.device)

    def _xy(self, sxy) -> torch.Tensor:
        sx, sy = (np.float32(s) for s in _as_pair(sxy, 2, "sxy"))
        if sx <= 0 or sy <= 0:
            raise ValueError(f"sxy must be > 0, got {sxy!r}")
        ys, xs = torch.meshgrid(
            torch.arange(self._h, dtype=torch.float32), torch.arange(self._w, dtype=torch.float32), indexing="ij"
        )
        return torch.stack([xs.reshape(-1) / float(sx), ys.reshape(-1) / float(sy)])

    def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """Smoothness kernel over the features (x / sx, y / sy)."""
        self._add_term(self._xy(sxy), compat, kernel, normalization)

    def addPairwiseBilateral(self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL, normalization=NORMALIZE_SYMMETRIC):
        """Appearance kernel over (x / sx, y / sy, r / sr, g / sg, b / sb); ``rgbim`` [H, W, 3] uint8."""
        rgbim = np.asarray(rgbim)
        if rgbim.dtype != np.uint8:
            raise ValueError(f"rgbim must be uint8 [H, W, 3], got dtype {rgbim.dtype}")
        if rgbim.ndim != 3 or rgbim.shape[0] != self._h or rgbim.shape[1] != self._w:
            raise ValueError(
                f"Bad shape for pairwise bilateral (Need {(self._h, self._w, 3)}, got {tuple(rgbim.shape)})"
            )
        if rgbim.shape[2] != 3:
            raise ValueError(
                "addPairwiseBilateral only works for RGB images. For other types, use "
                "`create_pairwise_bilateral` to construct your own pairwise energy and add it through "
                "`addPairwiseEnergy`."
            )
        srgb = [np.float32(s) for s in _as_pair(srgb, 3, "srgb")]
        if min(srgb) <= 0:
            raise ValueError(f"srgb must be > 0, got {srgb!r}")
        rgb = torch.from_numpy(np.ascontiguousarray(rgbim)).reshape(-1, 3).t().to(torch.float32)
        rgb = torch.stack([rgb[c] / float(srgb[c]) for c in range(3)])
        self._add_term(torch.cat([self._xy(sxy), rgb]), compat, kernel, normalization)
