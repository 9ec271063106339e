"""mIoU, accuracies and per-class IoU against hand-computed cases."""
import math

import pytest
import torch

from deeplabv2.metrics import ConfusionMatrix


def test_hand_computed_case():
    # 4 classes; class 3 never appears (neither in truth nor prediction) -> NaN, left out of means
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    prediction = torch.tensor([[0, 1, 1], [1, 0, 2]])
    matrix = ConfusionMatrix(num_classes=4)
    matrix.update(prediction, target)
    assert matrix.counts.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    scores = matrix.scores()
    # IoU: c0 = 1 / (2 + 2 - 1), c1 = 2 / (2 + 3 - 2), c2 = 0 / (1 + 0 - 0)
    assert scores.class_iou[:3] == pytest.approx((1 / 3, 2 / 3, 0.0))
    assert math.isnan(scores.class_iou[3])
    assert scores.mean_iou == pytest.approx(1 / 3)
    assert scores.pixel_accuracy == pytest.approx(3 / 5)
    assert scores.mean_accuracy == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert scores.pixels == 5


def test_accumulates_over_updates_and_merges():
    torch.manual_seed(0)
    target = torch.randint(0, 5, (4, 9, 9))
    target[:, 0] = 255
    prediction = torch.randint(0, 5, (4, 9, 9))
    whole = ConfusionMatrix(5)
    whole.update(prediction, target)
    first, second = ConfusionMatrix(5), ConfusionMatrix(5)
    first.update(prediction[:2], target[:2])
    second.update(prediction[2:], target[2:])
    first.merge(second)
    assert torch.equal(first.counts, whole.counts)
    assert whole.counts.sum() == (target != 255).sum()


def test_perfect_prediction():
    target = torch.tensor([0, 1, 2, 2, 255])
    matrix = ConfusionMatrix(3)
    matrix.update(target.clamp(max=2), target)
    scores = matrix.scores()
    assert scores.mean_iou == scores.pixel_accuracy == scores.mean_accuracy == 1.0


def test_table_lists_every_class():
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    table = matrix.scores().table(["background", "shape"])
    assert "background" in table and "shape" in table and "mean IoU" in table
    assert "50.00" in table  # background IoU 1/2


@pytest.mark.parametrize(
    "prediction, target, message",
    [
        (torch.tensor([0, 1]), torch.tensor([0, 1, 1]), "differ"),
        (torch.tensor([0, 1]), torch.tensor([0, 7]), "outside"),
        (torch.tensor([0, 9]), torch.tensor([0, 1]), "outside"),
    ],
)
def test_bad_inputs(prediction, target, message):
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(3).update(prediction, target)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
