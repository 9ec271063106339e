"""A pydensecrf client written the way its users write one (e.g. the CRF post-processing of
DeepLab ports): the two imports, DenseCRF2D, unary_from_softmax, the two pairwise terms,
inference. tests/test_compat_pydensecrf.py runs this file unchanged against the real pydensecrf
and, after deeplabv2_ext.compat.pydensecrf.install(), against ours. Do not edit it to suit us.
"""
import numpy as np
import pydensecrf.densecrf as dcrf
import pydensecrf.utils as utils


class CRFPostProcessor:
    """Refines a softmax map [C, H, W] with the image [H, W, 3] uint8; returns Q [C, H, W]."""

    def __init__(self, iterations=10, pos_w=3, pos_xy_std=3, bi_w=4, bi_xy_std=67, bi_rgb_std=3):
        self.iterations = iterations
        self.pos_w, self.pos_xy_std = pos_w, pos_xy_std
        self.bi_w, self.bi_xy_std, self.bi_rgb_std = bi_w, bi_xy_std, bi_rgb_std

    def __call__(self, image, probmap):
        C, H, W = probmap.shape
        unary = np.ascontiguousarray(utils.unary_from_softmax(probmap))
        d = dcrf.DenseCRF2D(W, H, C)
        d.setUnaryEnergy(unary)
        d.addPairwiseGaussian(sxy=self.pos_xy_std, compat=self.pos_w)
        d.addPairwiseBilateral(sxy=self.bi_xy_std, srgb=self.bi_rgb_std,
                               rgbim=np.ascontiguousarray(image), compat=self.bi_w)
        Q = d.inference(self.iterations)
        return np.array(Q).reshape((C, H, W))
