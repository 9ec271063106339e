"""pydensecrf's API (``pydensecrf.densecrf`` and ``pydensecrf.utils``) on deeplabv2_ext's DenseCRF.

A drop-in replacement for code written against Krähenbühl's CRF through pydensecrf. The same
two modules, with pydensecrf's names::

    import deeplabv2_ext.compat.pydensecrf.densecrf as dcrf   # was: import pydensecrf.densecrf as dcrf
    import deeplabv2_ext.compat.pydensecrf.utils as utils     # was: import pydensecrf.utils as utils

    d = dcrf.DenseCRF2D(W, H, n_labels)               # optional device="cuda"
    d.setUnaryEnergy(utils.unary_from_softmax(probs)) # U = -log(p), [L, H*W] float32
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=img, compat=10)   # img [H, W, 3] uint8
    Q = d.inference(5)                                # np.ndarray [L, H*W] float32

Or leave third-party code untouched: after :func:`install`, ``import pydensecrf...`` anywhere
in the process gets these modules. This package also re-exports both modules' names
(``from deeplabv2_ext.compat import pydensecrf as dcrf; dcrf.DenseCRF2D, dcrf.unary_from_softmax``).
See :mod:`deeplabv2_ext.compat.pydensecrf.densecrf` for what differs from pydensecrf.
"""
from __future__ import annotations

import sys

import torch

from deeplabv2_ext.compat.pydensecrf import densecrf, utils
from deeplabv2_ext.compat.pydensecrf.densecrf import *  # noqa: F403  (pydensecrf.densecrf's names)
from deeplabv2_ext.compat.pydensecrf.utils import *  # noqa: F403  (pydensecrf.utils' names)

__all__ = densecrf.__all__ + utils.__all__ + ["densecrf", "utils", "install"]


def install(device: str | torch.device | None = None) -> None:
    """Serve ``import pydensecrf``, ``pydensecrf.densecrf`` and ``pydensecrf.utils`` from this
    package for the rest of the process (like ``pymysql.install_as_MySQLdb()``), so that
    third-party pydensecrf code runs on deeplabv2_ext's CRF without an edit. Call it before that
    code imports pydensecrf; modules that already imported the real one keep it.

    ``device``: where the CRFs that such code creates run (it never passes a device), e.g.
    ``"cuda"``; None keeps :func:`~deeplabv2_ext.compat.pydensecrf.densecrf.default_device`.
    There is no undo; pydensecrf's ``pydensecrf.eigen`` module is not provided.
    """
    if device is not None:
        densecrf.set_default_device(device)
    package = sys.modules[__name__]
    sys.modules["pydensecrf"] = package
    sys.modules["pydensecrf.densecrf"] = densecrf
    sys.modules["pydensecrf.utils"] = utils
