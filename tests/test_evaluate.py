"""Inference, CRF refinement, evaluation loop and the pictures, with models whose answer is known."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import deeplabv2_ext
from deeplabv2.config import CRFConfig, EvalConfig
from deeplabv2.evaluate import evaluate, predict_log_probs, refine_with_crf
from deeplabv2.models import preprocess
from deeplabv2.visualize import colour_mask, overlay, save_mask, save_panel

THRESHOLD = (128 / 255 - 0.485) / 0.229  # red = 128 after torchvision preprocessing


class RedThreshold(nn.Module):
    """Two classes: red channel below / above 128 — exact at stride 1, blurred at stride 4."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        red = x[:, :1]
        if self.stride > 1:
            red = F.avg_pool2d(red, self.stride, ceil_mode=True)
        return torch.cat([THRESHOLD - red, red - THRESHOLD], 1) * 20


class RedDataset(torch.utils.data.Dataset):
    """Images with a red disc on a dark background (flat colours: the colour edge is the label
    edge); the label is 1 where red > 128."""

    num_classes = 2
    ignore_index = 255
    class_names = ("dark", "red")

    def __init__(self, count: int = 4, size: int = 24):
        rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.images = torch.full((count, 3, size, size), 90, dtype=torch.uint8)
        for index in range(count):
            centre, radius = size / 2 + index - 1.5, size / 4 + index
            disc = (rows - centre) ** 2 + (columns - centre + 2) ** 2 < radius**2
            self.images[index, 0] = torch.where(disc, 220, 40)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        label = (image[0] > 128).long()
        label[0, 0] = 255
        return {"image": image, "label": label, "name": str(index)}


# Each multi-scale convention's input resize at scale 0.5 of a 16 x 16 image, and whether it
# aligns corners (deeplabv2.models.resizing; the references are cited in tests/test_models.py).
CONVENTIONS = {
    "caffe": (dict(size=(8, 8)), True),  # Interp shrink 2: (16 - 1) // 2 + 1
    "kazuto1011": (dict(scale_factor=0.5), False),  # F.interpolate(x, scale_factor=0.5)
    "isht7": (dict(size=(9, 9)), True),  # int(16 * 0.5) + 1
}


@pytest.mark.parametrize("resizing", sorted(CONVENTIONS))
def test_single_scale_is_log_softmax_of_upsampled_logits(resizing):
    torch.manual_seed(0)
    model = RedThreshold(stride=4)
    model.resizing = resizing
    images = torch.randint(0, 256, (2, 3, 21, 18), dtype=torch.uint8)
    log_probs = predict_log_probs(model, images, "torchvision")
    logits = F.interpolate(model(preprocess(images, "torchvision")), size=(21, 18), mode="bilinear",
                           align_corners=CONVENTIONS[resizing][1])
    expected = logits.log_softmax(1).clamp(min=np.log(1e-8))
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("resizing", sorted(CONVENTIONS))
def test_multi_scale_and_flip_average_probabilities(resizing):
    """Test-time scales resize the input as the model's MSC convention does, and the logits back
    to the image likewise (a model without ``resizing`` gets caffe's)."""
    model = RedThreshold(stride=1)
    model.resizing = resizing
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    log_probs = predict_log_probs(model, images, "torchvision", scales=(0.5, 1.0), flip=True)
    assert log_probs.shape == (1, 2, 16, 16)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(1, 16, 16), atol=1e-5, rtol=0)
    inputs = preprocess(images, "torchvision")
    resize, aligned = CONVENTIONS[resizing]
    half = F.interpolate(inputs, mode="bilinear", align_corners=aligned, **resize)
    expected = (
        2 * F.interpolate(model(half), size=(16, 16), mode="bilinear",
                          align_corners=aligned).softmax(1)
        + 2 * model(inputs).softmax(1)  # the model is flip-equivariant: mirrored passes agree
    ) / 4
    torch.testing.assert_close(log_probs.exp(), expected, atol=1e-5, rtol=0)
    if resizing == "caffe":
        del model.resizing
        unlabelled = predict_log_probs(model, images, "torchvision", scales=(0.5, 1.0), flip=True)
        torch.testing.assert_close(unlabelled, log_probs, atol=0, rtol=0)
    with pytest.raises(ValueError, match="scales"):
        predict_log_probs(model, images, "torchvision", scales=(0.0,))


def test_refine_with_crf_is_dense_crf_with_the_config():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 12, 10), dtype=torch.uint8)
    log_probs = torch.randn(2, 3, 12, 10).log_softmax(1)
    crf = CRFConfig(iterations=3, bilateral_weight=5, bilateral_sxy=30, bilateral_srgb=13,
                    gaussian_weight=2, gaussian_sxy=2)
    expected = deeplabv2_ext.dense_crf(log_probs, images, iterations=3, bilateral_weight=5,
                                       bilateral_sxy=30, bilateral_srgb=13, gaussian_weight=2,
                                       gaussian_sxy=2)
    torch.testing.assert_close(refine_with_crf(log_probs, images, crf), expected)


def test_evaluate_perfect_model_with_and_without_crf():
    dataset = RedDataset()
    result = evaluate(RedThreshold(), dataset, EvalConfig(crf=True, batch_size=2), CRFConfig(),
                      "torchvision", torch.device("cpu"))
    assert result.images == 4
    assert result.scores.mean_iou == 1.0 and result.scores.pixels == 4 * 24 * 24 - 4
    assert result.crf_scores is not None and result.crf_scores.mean_iou > 0.99
    report = result.report(dataset.class_names)
    assert "with DenseCRF" in report and "mIoU 100.00%" in report


def test_evaluate_coarse_model_scores_below_one_and_crf_sharpens_edges():
    dataset = RedDataset()
    result = evaluate(RedThreshold(stride=8), dataset, EvalConfig(crf=True), CRFConfig(), "torchvision",
                      torch.device("cpu"))
    assert result.scores.mean_iou < 0.97
    assert result.crf_scores.mean_iou > result.scores.mean_iou + 0.02


def test_evaluation_batches_of_different_sizes_are_a_clear_error():
    class TwoSizes(RedDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            if index == 1:
                sample = {key: value[..., :20] if torch.is_tensor(value) else value
                          for key, value in sample.items()}
            return sample

    with pytest.raises(ValueError, match="batch_size=1"):
        evaluate(RedThreshold(), TwoSizes(), EvalConfig(batch_size=2), CRFConfig(), "torchvision",
                 torch.device("cpu"))


def test_pictures(tmp_path):
    palette = np.zeros((256, 3), np.uint8)
    palette[1] = (200, 0, 0)
    label = np.array([[0, 1], [1, 255]], np.uint8)
    save_mask(label, palette, tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as written:
        assert written.mode == "P"
        assert np.array_equal(np.asarray(written), label)
        assert written.getpalette()[3:6] == [200, 0, 0]
    colours = colour_mask(label, palette)
    assert colours[0, 1].tolist() == [200, 0, 0] and colours[1, 1].tolist() == [255, 255, 255]
    image = np.full((2, 2, 3), 100, np.uint8)
    assert overlay(image, label, palette, alpha=0.5)[0, 1].tolist() == [150, 50, 50]
    save_panel([[image, colours], [image, colours]], ("a", "b"), tmp_path / "panel.png", scale=4)
    with Image.open(tmp_path / "panel.png") as panel:
        assert panel.size[0] > 2 * 8 and panel.size[1] > 2 * 8
    with pytest.raises(ValueError, match="one image per title"):
        save_panel([[image]], ("a", "b"), tmp_path / "bad.png")
