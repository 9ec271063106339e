"""DenseCRF: mean-field inference of the fully connected CRF (Krähenbühl & Koltun 2011).

The pairwise Gaussian kernels are filtered on a permutohedral lattice (Adams et al. 2010) that
is built once per call by ``torch.ops.deeplabv2_ext.permutohedral_lattice`` (CPU or CUDA, all
images of the batch at once) and reused by every iteration and by the backward pass. The
numbers follow Krähenbühl's v2 code that pydensecrf wraps: same lattice, normalisations,
compatibility signs and update ``Q = softmax(unary - sum_k C_k · K_k(Q))``.

Inference (float32 or lower, no gradient needed) runs the whole loop in one op,
``torch.ops.deeplabv2_ext.dense_crf_mean_field``. On the CPU (csrc/densecrf/cpu/
mean_field_kernel.cpp) it keeps, per kernel, a splat and a slice plan (16·(D+1) bytes per
pixel) and two vertex buffers (2·M·L' floats, L' = L rounded up to a multiple of 8), plus unary
and Q (2·P·L' floats): about 190 MB for one 512×512 image with L = 21. On CUDA
(csrc/densecrf/cuda/permutohedral_cuda.cpp) the loop is driven from C++: per kernel and
iteration the filter kernels with the normalisers folded into their weights, the slice adding
into the energy, then a softmax; it keeps per kernel splat and slice weights (8·(D+1) bytes per
pixel) and two vertex buffers (2·M·L floats), plus unary, energy and Q (3·P·L floats).

Gradients: the mean-field loop is written with differentiable torch ops around the filter op,
whose backward is its exact adjoint (the same lattice, blur axes in reverse order). Autograd
stores Q of every iteration (``iterations + 1`` tensors of N·L·H·W values; the filter op saves
only the lattice) and, when the compatibility is a trainable matrix, each kernel's filtered Q
of every iteration (``2 · iterations`` more), plus the two lattices. Measured with saved-tensor
hooks, one 512×512 image, L = 21, 10 iterations, float32: 273 MiB with number weights, 693 MiB
with ``DenseCRF(trainable=True)``. Run under ``torch.no_grad()`` for inference: then only a few
N·L·H·W buffers are alive at a time.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

import deeplabv2_ext._extension  # noqa: F401  (registers torch.ops.deeplabv2_ext.*)
from deeplabv2_ext import _C

NORMALIZATIONS = ("symmetric", "after", "none")
_MAX_FEATURE_DIM: int = _C.MAX_LATTICE_DIM
_MEAN_FIELD_MAX_LABELS: int = _C.MEAN_FIELD_MAX_LABELS
# The fused CPU loop visits pixels in 64x64 blocks (and, inside a block, in bilateral-lattice
# order), which keeps the Gaussian kernel's reads local.
_LOOP_TILE = 64
# The largest batch of points whose Gaussian lattice is kept between calls (~170 MB).
_GAUSSIAN_LATTICE_CACHE_POINTS = 1 << 22


class PermutohedralLattice(NamedTuple):
    """A lattice built by ``build_lattice``: vertices of each point, weights, blur neighbours.

    The fields are the op's lattice tensors in the op's order (``_C.LATTICE_TENSORS``, defined by
    ``LatticeTensor`` in csrc/densecrf/permutohedral.h; checked at import), so ``list(lattice)``
    is the ``Tensor[] lattice`` argument of ``permutohedral_filter``."""

    vertex_index: Tensor  # [N, P, D+1] int32, global over the batch
    vertex_weight: Tensor  # [N, P, D+1] float32 barycentric weights
    blur_neighbors: Tensor  # [D+1, M, 2] int32, -1 when absent
    splat_offsets: Tensor  # [M+1] int32: CSR over vertices of the entries that touch them
    splat_entries: Tensor  # [N*P*(D+1)] int32

    @staticmethod
    def flatten(lattices: Sequence[PermutohedralLattice]) -> list[Tensor]:
        """The ``Tensor[] lattices`` argument of ``dense_crf_mean_field``: the tensors of lattice
        0 in field order, then those of lattice 1, ..."""
        return [tensor for lattice in lattices for tensor in lattice]

    @classmethod
    def unflatten(cls, tensors: Sequence[Tensor]) -> list[PermutohedralLattice]:
        """The inverse of ``flatten``."""
        size = len(cls._fields)
        if len(tensors) % size:
            raise ValueError(f"a lattice is {size} tensors, got {len(tensors)} tensors")
        return [cls(*tensors[i:i + size]) for i in range(0, len(tensors), size)]

    def filter(self, values: Tensor, reverse: bool = False) -> Tensor:
        """Splat, blur and slice ``values`` [N, V, P]; differentiable w.r.t. values."""
        return self.filter_points(values.transpose(1, 2), reverse).transpose(1, 2)

    def filter_points(self, values: Tensor, reverse: bool = False) -> Tensor:
        """``filter`` for point-major ``values`` [N, P, V] (the op's native layout)."""
        return torch.ops.deeplabv2_ext.permutohedral_filter(values, list(self), reverse)


if PermutohedralLattice._fields != tuple(_C.LATTICE_TENSORS):
    raise ImportError(f"deeplabv2_ext.densecrf.PermutohedralLattice has the fields "
                      f"{PermutohedralLattice._fields}, the C++ ops the lattice tensors "
                      f"{_C.LATTICE_TENSORS}")


def build_lattice(features: Tensor) -> PermutohedralLattice:
    """The permutohedral lattice of ``features`` [N, D, P] (positions already divided by the
    standard deviations), for all N images at once. Features must be finite and at most 1e6 in
    magnitude (ValueError otherwise)."""
    if features.dim() != 3:
        raise ValueError(f"build_lattice: features must be [N, D, P], got {tuple(features.shape)}")
    if not 1 <= features.shape[1] <= _MAX_FEATURE_DIM:
        raise ValueError(f"build_lattice: the feature dimension must be in [1, "
                         f"{_MAX_FEATURE_DIM}], got {features.shape[1]}")
    lattice = torch.ops.deeplabv2_ext.permutohedral_lattice(
        features.detach().to(torch.float32).contiguous())
    return PermutohedralLattice(*lattice)


@torch.library.register_fake("deeplabv2_ext::permutohedral_lattice")
def _lattice_fake(features: Tensor) -> tuple[Tensor, ...]:
    batch, dim, points = features.shape
    num_vertices = torch.library.get_ctx().new_dynamic_size()
    return (features.new_empty((batch, points, dim + 1), dtype=torch.int32),
            features.new_empty((batch, points, dim + 1)),
            features.new_empty((dim + 1, num_vertices, 2), dtype=torch.int32),
            features.new_empty((num_vertices + 1,), dtype=torch.int32),
            features.new_empty((batch * points * (dim + 1),), dtype=torch.int32))


@torch.library.register_fake("deeplabv2_ext::permutohedral_filter")
def _filter_fake(values: Tensor, lattice: list[Tensor], reverse: bool) -> Tensor:
    return values.new_empty(values.shape)


def _filter_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    _, lattice, ctx.reverse = inputs
    ctx.save_for_backward(*lattice)


def _filter_backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
    # The adjoint of splat-blur-slice is the same lattice with the blur axes in reverse order.
    grad_values = torch.ops.deeplabv2_ext.permutohedral_filter(
        grad_output.contiguous(), list(ctx.saved_tensors), not ctx.reverse)
    return grad_values, [None] * len(ctx.saved_tensors), None  # the structure of the inputs


torch.library.register_autograd("deeplabv2_ext::permutohedral_filter", _filter_backward,
                                setup_context=_filter_setup_context)


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


@dataclass
class PairwiseTerm:
    """One Gaussian pairwise potential: a lattice, its normalisation and a compatibility.

    ``message(Q)`` is what pydensecrf's ``PairwisePotential::apply`` returns,
    ``compatibility @ normalised_filter(Q)``; the mean-field update subtracts it. Values are
    point-major, [N, P, L], the layout of the filter op.
    """

    lattice: PermutohedralLattice
    normalizer: Tensor | None  # [N, P, 1]; None for "none"
    normalization: str
    compatibility: Tensor | float  # [L, L] matrix, or a Potts weight w (the matrix -w·I)

    @classmethod
    def from_features(cls, features: Tensor, compatibility: float | Tensor, normalization: str,
                      num_labels: int, dtype: torch.dtype = torch.float32) -> PairwiseTerm:
        """Build the term for ``features`` [N, D, P]. ``compatibility`` as in pydensecrf: a
        float w is Potts (message ``-w · K(Q)``), an [L] vector is diagonal, an [L, L] matrix
        is symmetrised to ``(m + m^T) / 2``."""
        _check_normalization(normalization)
        return cls.from_lattice(build_lattice(features), compatibility, normalization,
                                num_labels, dtype)

    @classmethod
    def from_lattice(cls, lattice: PermutohedralLattice, compatibility: float | Tensor,
                     normalization: str, num_labels: int,
                     dtype: torch.dtype = torch.float32) -> PairwiseTerm:
        """``from_features`` for a lattice already built by ``build_lattice``."""
        _check_normalization(normalization)
        batch, points = lattice.vertex_index.shape[:2]
        device = lattice.vertex_index.device
        normalizer = None
        if normalization != "none":  # the C++ ops' normaliser of K(1) (kernel_normalizer)
            ones = torch.ones(batch, points, 1, dtype=dtype, device=device)
            normalizer = torch.ops.deeplabv2_ext.permutohedral_normalizer(
                lattice.filter_points(ones), normalization)
        if isinstance(compatibility, (int, float)):
            compatibility = float(compatibility)
        else:
            compatibility = compatibility_matrix(compatibility, num_labels, device, dtype)
        return cls(lattice, normalizer, normalization, compatibility)

    def filter(self, values: Tensor) -> Tensor:
        """pydensecrf's ``DenseKernel::filter`` (not transposed) of ``values`` [N, P, V]."""
        if self.normalization == "symmetric":
            return self.normalizer * self.lattice.filter_points(values * self.normalizer)
        if self.normalization == "after":
            return self.normalizer * self.lattice.filter_points(values)
        return self.lattice.filter_points(values)

    def message(self, Q: Tensor) -> Tensor:
        """``compatibility @ filter(Q)`` for point-major Q [N, P, L]."""
        if isinstance(self.compatibility, float):
            return self.filter(Q) * -self.compatibility
        return self.filter(Q) @ self.compatibility.T

    def subtract_message(self, energy: Tensor, Q: Tensor) -> Tensor:
        """``energy - message(Q)``; one fused op for Potts."""
        if isinstance(self.compatibility, float):
            return torch.add(energy, self.filter(Q), alpha=self.compatibility)
        return energy - self.message(Q)


def compatibility_matrix(compatibility: float | Tensor, num_labels: int, device: torch.device,
                         dtype: torch.dtype) -> Tensor:
    """The [L, L] matrix pydensecrf applies for a Potts weight, a diagonal or a full matrix."""
    if isinstance(compatibility, (int, float)):
        return -float(compatibility) * torch.eye(num_labels, device=device, dtype=dtype)
    if isinstance(compatibility, Tensor) and compatibility.dim() == 0:
        return -compatibility.to(device, dtype) * torch.eye(num_labels, device=device, dtype=dtype)
    compatibility = torch.as_tensor(compatibility, device=device, dtype=dtype)
    if compatibility.shape == (num_labels,):
        return torch.diag(compatibility)
    if compatibility.shape == (num_labels, num_labels):
        return 0.5 * (compatibility + compatibility.T)
    raise ValueError(f"compatibility must be a number, an [L] vector or an [L, L] matrix with "
                     f"L = {num_labels}, got shape {tuple(compatibility.shape)}")


def _step_points(unary: Tensor, terms: Sequence[PairwiseTerm], Q: Tensor) -> Tensor:
    energy = unary
    for term in terms:
        energy = term.subtract_message(energy, Q)
    return torch.softmax(energy, dim=-1)


def _mean_field_points(unary: Tensor, terms: Sequence[PairwiseTerm], iterations: int) -> Tensor:
    Q = torch.softmax(unary, dim=-1)
    for _ in range(iterations):
        Q = _step_points(unary, terms, Q)
    return Q


def mean_field_step(unary: Tensor, terms: Sequence[PairwiseTerm], Q: Tensor) -> Tensor:
    """One mean-field update ``softmax(unary - sum_k message_k(Q))`` of Q [N, L, P]."""
    return _step_points(unary.transpose(1, 2), terms, Q.transpose(1, 2)).transpose(1, 2)


def mean_field(unary: Tensor, terms: Sequence[PairwiseTerm], iterations: int) -> Tensor:
    """Marginals [N, L, P] after ``iterations`` mean-field updates from
    ``Q = softmax(unary)``; ``unary`` [N, L, P] is pydensecrf's ``-U``."""
    unary_points = unary.transpose(1, 2).contiguous()
    return _mean_field_points(unary_points, terms, iterations).transpose(1, 2)


def pixel_tiles(batch: int, height: int, width: int, device: torch.device,
                tile: int = _LOOP_TILE) -> Tensor:
    """[N*H*W] int32: the index of the ``tile`` x ``tile`` pixel block of every pixel, numbered
    over the batch (the point groups of ``dense_crf_mean_field``)."""
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    ys = torch.arange(height, device=device) // tile
    xs = torch.arange(width, device=device) // tile
    per_image = (ys[:, None] * tiles_x + xs[None, :]).reshape(-1)
    offsets = torch.arange(batch, device=device) * (tiles_x * tiles_y)
    return (offsets[:, None] + per_image[None, :]).reshape(-1).to(torch.int32)


def pixel_grid(batch: int, height: int, width: int, device: torch.device) -> Tensor:
    """[N, 2, H·W] pixel coordinates (x = column, y = row) in float32, pydensecrf's order."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                            torch.arange(width, dtype=torch.float32, device=device),
                            indexing="ij")
    return torch.stack([xs, ys]).reshape(1, 2, height * width).expand(batch, 2, height * width)


def gaussian_features(batch: int, height: int, width: int, sxy: float,
                      device: torch.device) -> Tensor:
    """Features of pydensecrf's ``addPairwiseGaussian``: (x / sxy, y / sxy)."""
    return pixel_grid(batch, height, width, device) / sxy


def gaussian_lattice(batch: int, height: int, width: int, sxy: float,
                     device: torch.device) -> PermutohedralLattice:
    """The lattice of ``gaussian_features``. It depends only on the sizes, ``sxy`` and the
    device, so the last one built for at most 2^22 points (about 40 bytes each) is kept
    (``_cached_gaussian_lattice.cache_clear()`` frees it): calls on images of one size build it
    once."""
    if torch.compiler.is_compiling() or batch * height * width > _GAUSSIAN_LATTICE_CACHE_POINTS:
        return build_lattice(gaussian_features(batch, height, width, sxy, device))
    return _cached_gaussian_lattice(batch, height, width, float(sxy), torch.device(device))


@functools.lru_cache(maxsize=1)
def _cached_gaussian_lattice(batch: int, height: int, width: int, sxy: float,
                             device: torch.device) -> PermutohedralLattice:
    return build_lattice(gaussian_features(batch, height, width, sxy, device))


def bilateral_features(image: Tensor, sxy: float, srgb: float) -> Tensor:
    """Features of pydensecrf's ``addPairwiseBilateral``: (x, y) / sxy, (r, g, b) / srgb."""
    batch, _, height, width = image.shape
    colours = image.to(torch.float32).reshape(batch, 3, height * width) / srgb
    return torch.cat([pixel_grid(batch, height, width, image.device) / sxy, colours], dim=1)


def _check_crf_args(unary: Tensor, image: Tensor, iterations: int, stds: dict[str, float],
                    normalization: str) -> None:
    if unary.dim() != 4:
        raise ValueError(f"dense_crf: unary must be 4-D [N, L, H, W], got {tuple(unary.shape)}")
    if not unary.is_floating_point():
        raise TypeError(f"dense_crf: unary must be floating point, got {unary.dtype}")
    if unary.shape[1] == 0:
        raise ValueError("dense_crf: unary has L = 0 labels")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"dense_crf: image must be [N, 3, H, W] RGB, got {tuple(image.shape)}")
    if (image.shape[0], *image.shape[2:]) != (unary.shape[0], *unary.shape[2:]):
        raise ValueError(f"dense_crf: image {tuple(image.shape)} and unary "
                         f"{tuple(unary.shape)} differ in N, H or W")
    if image.device != unary.device:
        raise ValueError(f"dense_crf: unary is on {unary.device} but image on {image.device}")
    if image.dtype == torch.bool or image.is_complex():
        raise TypeError(f"dense_crf: image must be uint8 or float, got {image.dtype}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"dense_crf: iterations must be an int >= 0, got {iterations!r}")
    for name, value in stds.items():
        if not value > 0:
            raise ValueError(f"dense_crf: {name} must be > 0, got {value}")
    _check_normalization(normalization)


def _check_finite(unary: Tensor) -> None:
    if torch.compiler.is_compiling():
        # a data-dependent check: an assert op in the graph instead of a host branch
        torch._assert_async(torch.isfinite(unary).all(), "dense_crf: unary contains NaN or Inf")
    elif unary.numel():
        with torch.no_grad():  # no graph through the check
            finite = bool(torch.isfinite(unary).all())
        if not finite:
            raise ValueError("dense_crf: unary contains NaN or Inf")


def _as_float(value: float | Tensor) -> float:
    return float(value.detach()) if isinstance(value, Tensor) else float(value)


def _is_symbolic(weight: float | Tensor) -> bool:
    """Whether a kernel weight stays a tensor (its value never read on the host): when it needs
    a gradient, and for any tensor under torch.compile (reading it would break the graph)."""
    return isinstance(weight, Tensor) and (weight.requires_grad or torch.compiler.is_compiling())


def dense_crf(
    unary: Tensor,
    image: Tensor,
    iterations: int = 10,
    *,
    bilateral_weight: float | Tensor = 4.0,
    bilateral_sxy: float = 67.0,
    bilateral_srgb: float = 3.0,
    gaussian_weight: float | Tensor = 3.0,
    gaussian_sxy: float = 3.0,
    compatibility: Tensor | None = None,
    normalization: str = "symmetric",
) -> Tensor:
    """Mean-field inference of the fully connected CRF with a Gaussian (smoothness) and a
    bilateral (appearance) kernel, batched, on the device of ``unary``.

    Args:
        unary: [N, L, H, W] label scores in log space (pydensecrf's ``-U``): passing log(p)
            equals ``setUnaryEnergy(unary_from_softmax(p))``.
        image: [N, 3, H, W] RGB, uint8 or float in 0..255.
        iterations: mean-field iterations (0 returns ``softmax(unary)``).
        bilateral_weight, bilateral_sxy, bilateral_srgb: appearance kernel; weight 0 = off.
        gaussian_weight, gaussian_sxy: smoothness kernel; weight 0 = off.
        compatibility: None = Potts, or an [L] vector / [L, L] matrix with pydensecrf's meaning
            and sign; each kernel uses ``weight · compatibility``.
        normalization: "symmetric" (pydensecrf's default), "after" (NIPS 2011 / DeepLab v1 /
            CRF-as-RNN) or "none".

    Returns:
        Q [N, L, H, W] marginals (float32, or float64 for a float64 unary), summing to 1 over L.
        Differentiable w.r.t. ``unary``, and the weights/compatibility when they are tensors.
    """
    _check_crf_args(unary, image, iterations,
                    {"bilateral_sxy": bilateral_sxy, "bilateral_srgb": bilateral_srgb,
                     "gaussian_sxy": gaussian_sxy}, normalization)
    batch, labels, height, width = unary.shape
    points = height * width
    kernels = [  # (weight, a function that returns the kernel's lattice)
        (gaussian_weight, lambda: gaussian_lattice(batch, height, width, gaussian_sxy,
                                                   unary.device)),
        (bilateral_weight, lambda: build_lattice(bilateral_features(image, bilateral_sxy,
                                                                    bilateral_srgb))),
    ]
    kernels = [(weight if _is_symbolic(weight) else _as_float(weight), lattice)
               for weight, lattice in kernels]
    kernels = [(weight, lattice) for weight, lattice in kernels
               if isinstance(weight, Tensor) or weight != 0.0]
    if _use_fused_mean_field(unary, compatibility, [weight for weight, _ in kernels]):
        # (the op checks that unary is finite while copying it)
        if compatibility is None:
            kernel_compatibility = [weight for weight, _ in kernels]
        else:
            matrix = compatibility_matrix(compatibility.detach(), labels, unary.device,
                                          torch.float32)
            kernel_compatibility = [weight * matrix for weight, _ in kernels]
        Q = fused_mean_field(unary.to(torch.float32).reshape(batch, labels, points),
                             [lattice() for _, lattice in kernels],
                             kernel_compatibility, iterations, normalization,
                             pixel_tiles(batch, height, width, unary.device)
                             if unary.device.type == "cpu" else None)
        return Q.reshape(batch, labels, height, width)
    _check_finite(unary)
    dtype = torch.float64 if unary.dtype == torch.float64 else torch.float32
    # Point-major [N, P, L] (contiguous), the layout of the filter op, for the whole loop.
    unary_points = unary.to(dtype).reshape(batch, labels, points).transpose(1, 2).contiguous()
    terms = []
    for weight, lattice in kernels:
        if compatibility is None and not isinstance(weight, Tensor):
            term_compatibility = weight  # Potts
        elif compatibility is None:
            term_compatibility = -weight * torch.eye(labels, device=unary.device, dtype=dtype)
        else:
            term_compatibility = weight * compatibility_matrix(
                compatibility.to(unary.device, dtype), labels, unary.device, dtype)
        terms.append(PairwiseTerm.from_lattice(lattice(), term_compatibility, normalization,
                                               labels, dtype))
    Q = _mean_field_points(unary_points, terms, iterations)
    return Q.transpose(1, 2).reshape(batch, labels, height, width).contiguous()


def _requires_grad(value: float | Tensor | None) -> bool:
    return isinstance(value, Tensor) and value.requires_grad


def _use_fused_mean_field(unary: Tensor, compatibility: Tensor | None,
                          weights: Sequence[float | Tensor]) -> bool:
    """Whether ``dense_crf`` runs the whole loop in the ``dense_crf_mean_field`` op: when no
    gradient is needed (the op has no backward) and unary is not float64."""
    needs_grad = torch.is_grad_enabled() and (
        unary.requires_grad or _requires_grad(compatibility)
        or any(_requires_grad(weight) for weight in weights))
    return (not needs_grad and unary.dtype != torch.float64
            and fused_mean_field_supports(unary.device, unary.shape[1]))


def fused_mean_field_supports(device: torch.device, num_labels: int) -> bool:
    """Whether ``fused_mean_field`` runs on ``device`` for ``num_labels`` labels (the op has CPU
    and CUDA kernels for up to 256 labels)."""
    return device.type in ("cpu", "cuda") and num_labels <= _MEAN_FIELD_MAX_LABELS


def fused_mean_field(unary: Tensor, lattices: Sequence[PermutohedralLattice],
                     compatibilities: Sequence[float | Tensor], iterations: int,
                     normalization: str, point_groups: Tensor | None = None) -> Tensor:
    """The mean-field loop in one op (no gradient), on label-major ``unary`` [N, L, P] float32
    -> Q [N, L, P]. One lattice per kernel, all with the same ``normalization``; each kernel's
    compatibility is a Potts weight w (a number or a 0-dim tensor: message ``-w · K(Q)``) or an
    [L, L] message matrix (as returned by ``compatibility_matrix``). ``point_groups`` [N*P]
    int32 (e.g. ``pixel_tiles``) sets the order the CPU loop visits points in; it changes
    speed, not the result (the CUDA op only checks it)."""
    labels = unary.shape[1]

    def is_potts(c: float | Tensor) -> bool:
        return not isinstance(c, Tensor) or c.dim() == 0

    def as_tensor(c: float | Tensor) -> Tensor:
        return torch.as_tensor(c).detach().to(unary.device, torch.float32)

    if all(isinstance(c, (int, float)) for c in compatibilities):  # one tensor, no stack
        kernel_compatibility = torch.tensor([float(c) for c in compatibilities],
                                            dtype=torch.float32, device=unary.device)
    elif all(is_potts(c) for c in compatibilities):
        kernel_compatibility = torch.stack([as_tensor(c) for c in compatibilities])
    else:
        kernel_compatibility = torch.stack([
            compatibility_matrix(as_tensor(c), labels, unary.device, torch.float32)
            if is_potts(c) else as_tensor(c) for c in compatibilities])
    return torch.ops.deeplabv2_ext.dense_crf_mean_field(
        unary, PermutohedralLattice.flatten(lattices), kernel_compatibility, point_groups,
        iterations, normalization)


@torch.library.register_fake("deeplabv2_ext::dense_crf_mean_field")
def _mean_field_fake(unary: Tensor, lattices: list[Tensor], compatibility: Tensor,
                     point_groups: Tensor | None, iterations: int, normalization: str) -> Tensor:
    return unary.new_empty(unary.shape)


def permutohedral_filter(values: Tensor, features: Tensor, normalization: str = "after") -> Tensor:
    """High-dimensional Gaussian filter ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (the
    permutohedral approximation, self term included), e.g. a bilateral filter.

    Args:
        values: [N, V, *spatial] (1-3 spatial dims), float32 or float64.
        features: [N, D, *spatial] positions divided by the standard deviations, 1 <= D <= 16,
            finite and at most 1e6 in magnitude.
        normalization: "after" (default: divide by the filtered ones, a normalised blur),
            "symmetric" (``n · K(n · v)``, n = K(1)^-1/2) or "none" (the raw filter).

    Returns:
        The filtered values, shaped like ``values``; differentiable w.r.t. ``values``.
    """
    _check_normalization(normalization)
    if values.dim() not in (3, 4, 5) or features.dim() != values.dim():
        raise ValueError(f"permutohedral_filter: values [N, V, *spatial] and features "
                         f"[N, D, *spatial] need 1-3 spatial dims, got {tuple(values.shape)} "
                         f"and {tuple(features.shape)}")
    if values.shape[0] != features.shape[0] or values.shape[2:] != features.shape[2:]:
        raise ValueError(f"permutohedral_filter: values {tuple(values.shape)} and features "
                         f"{tuple(features.shape)} differ in N or spatial size")
    if values.device != features.device:
        raise ValueError(f"permutohedral_filter: values on {values.device}, features on "
                         f"{features.device}")
    if not values.is_floating_point() or not features.is_floating_point():
        raise TypeError("permutohedral_filter: values and features must be floating point")
    batch, channels = values.shape[:2]
    num_points = math.prod(values.shape[2:])
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    term = PairwiseTerm.from_features(features.reshape(batch, features.shape[1], num_points), 0.0,
                                      normalization, channels, dtype)
    points = values.to(dtype).reshape(batch, channels, num_points).transpose(1, 2)
    return term.filter(points).transpose(1, 2).reshape(values.shape)


class DenseCRF(nn.Module):
    """``dense_crf`` as a module: ``forward(unary, image) -> Q``.

    With ``trainable=True`` the two kernel weights and an [L, L] compatibility matrix
    (initialised to Potts, ``-I`` in pydensecrf's sign; needs ``num_labels``) are parameters,
    trained end to end through the mean-field iterations (CRF-as-RNN).
    """

    def __init__(self, iterations: int = 10, *, bilateral_weight: float = 4.0,
                 bilateral_sxy: float = 67.0, bilateral_srgb: float = 3.0,
                 gaussian_weight: float = 3.0, gaussian_sxy: float = 3.0,
                 compatibility: Tensor | None = None, normalization: str = "symmetric",
                 trainable: bool = False, num_labels: int | None = None) -> None:
        super().__init__()
        _check_normalization(normalization)
        self.iterations = iterations
        self.bilateral_sxy, self.bilateral_srgb = bilateral_sxy, bilateral_srgb
        self.gaussian_sxy = gaussian_sxy
        self.normalization = normalization
        self.trainable = trainable
        if trainable:
            if num_labels is None:
                raise ValueError("DenseCRF(trainable=True) needs num_labels")
            if compatibility is None:
                compatibility = -torch.eye(num_labels)
            else:
                compatibility = compatibility_matrix(compatibility, num_labels,
                                                     torch.device("cpu"), torch.float32)
            self.bilateral_weight = nn.Parameter(torch.tensor(float(bilateral_weight)))
            self.gaussian_weight = nn.Parameter(torch.tensor(float(gaussian_weight)))
            self.compatibility = nn.Parameter(compatibility.clone().float())
        else:
            self.bilateral_weight, self.gaussian_weight = bilateral_weight, gaussian_weight
            if compatibility is not None:
                self.register_buffer("compatibility", torch.as_tensor(compatibility))
            else:
                self.compatibility = None

    def forward(self, unary: Tensor, image: Tensor) -> Tensor:
        return dense_crf(unary, image, self.iterations,
                         bilateral_weight=self.bilateral_weight,
                         bilateral_sxy=self.bilateral_sxy, bilateral_srgb=self.bilateral_srgb,
                         gaussian_weight=self.gaussian_weight, gaussian_sxy=self.gaussian_sxy,
                         compatibility=self.compatibility, normalization=self.normalization)

    def extra_repr(self) -> str:
        return (f"iterations={self.iterations}, bilateral_sxy={self.bilateral_sxy}, "
                f"bilateral_srgb={self.bilateral_srgb}, gaussian_sxy={self.gaussian_sxy}, "
                f"normalization={self.normalization!r}, trainable={self.trainable}")
