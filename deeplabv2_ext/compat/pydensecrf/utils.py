"""``pydensecrf.utils`` on NumPy: unaries from probabilities or labels, and pairwise features
for ``DenseCRF.addPairwiseEnergy``. The same names, defaults and float32 results as pydensecrf's
(the tests compare them bit for bit)."""
from __future__ import annotations

from numbers import Number

import numpy as np

__all__ = ["unary_from_softmax", "unary_from_labels", "create_pairwise_gaussian",
           "create_pairwise_bilateral"]


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """Unary energies -log(p) [n_classes, n_pixels] float32 from class probabilities ``sm``
    [n_classes, ...]. ``scale`` in (0, 1] mixes them with the uniform distribution
    (scale * p + (1 - scale) / n_classes); probabilities are clipped to [clip, 1] (unless clip
    is None) so that the log stays finite."""
    sm = np.asarray(sm)
    n = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"`scale` needs to be in (0,1], got {scale}")
        sm = scale * sm + (1 - scale) * (np.ones(sm.shape) / n)
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    return (-np.log(sm)).reshape(n, -1).astype(np.float32)


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """Unary energies [n_labels, n_pixels] float32 from a label map: probability ``gt_prob`` for
    the annotated label, the rest spread evenly over the others. With ``zero_unsure`` label 0
    means "unknown" (uniform) and labels 1..n_labels map to classes 0..n_labels-1."""
    if not 0 < gt_prob < 1:
        raise ValueError("`gt_prob must be in (0,1).")
    labels = np.asarray(labels).reshape(-1)
    other = -np.log((1.0 - gt_prob) / (n_labels - 1))
    hit = -np.log(gt_prob)
    u = np.full((n_labels, labels.size), other, dtype=np.float32)
    cls = labels - 1 if zero_unsure else labels
    u[cls, np.arange(labels.size)] = hit
    if zero_unsure:
        u[:, labels == 0] = -np.log(1.0 / n_labels)
    return u


def _scaled_mesh(sdims, shape) -> np.ndarray:
    sdims = tuple(sdims)
    if len(sdims) != len(shape):
        raise ValueError(f"need one scale per dimension: {len(shape)} for shape {tuple(shape)}, got {sdims}")
    mesh = np.array(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), dtype=np.float32)
    for axis, s in enumerate(sdims):
        mesh[axis] /= s
    return mesh


def create_pairwise_gaussian(sdims, shape):
    """Features [len(shape), prod(shape)] float32: the pixel coordinates (in ``shape``'s axis
    order, i.e. row before column for 2-D) divided by ``sdims``."""
    return _scaled_mesh(sdims, shape).reshape(len(shape), -1)


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Features [n_dims + n_channels, n_pixels] float32: the scaled pixel coordinates followed by
    the image channels divided by ``schan`` (a number or one per channel). ``chdim`` is the
    channel axis of ``img``, or -1 when it has none."""
    img = np.asarray(img)
    chan = img[np.newaxis] if chdim == -1 else np.moveaxis(img, chdim, 0)
    chan = chan.astype(np.float32)
    if isinstance(schan, Number):
        chan /= schan
    else:
        for c, s in enumerate(schan):
            chan[c] /= s
    feats = np.concatenate([_scaled_mesh(sdims, chan.shape[1:]), chan])
    return feats.reshape(feats.shape[0], -1)

