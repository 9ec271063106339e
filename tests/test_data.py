"""Tests of deeplabv2.data: VOC / Cityscapes readers on tiny folders written here, their error
messages, DeepLabV2's training augmentation, the synthetic shapes, and build_datasets.

Run from the repository root: `PYTHONPATH=python pytest tests/test_data.py`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from deeplabv2.config import DataConfig
from deeplabv2.data import (
    CITYSCAPES_CLASSES,
    LABEL_ID_TO_TRAIN_ID,
    VOC_CLASSES,
    Cityscapes,
    DatasetError,
    SyntheticShapes,
    TrainAugment,
    VOCSegmentation,
    build_datasets,
    build_val_dataset,
    cityscapes_palette,
    colorize,
    dataset_info,
    label_ids_to_train_ids,
    voc_palette,
)
from deeplabv2.data.synthetic import COLOURS

PAD_RGB = (123, 117, 104)


# --------------------------------------------------------------------------- files on disk
def smooth_image(height: int, width: int, offset: int) -> np.ndarray:
    """A JPEG-friendly RGB image [H, W, 3]: gradients, different per `offset`."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [(40 + 3 * x + offset) % 256, (30 + 4 * y) % 256, np.full_like(x, 90 + offset)], axis=-1
    ).astype(np.uint8)


def boxed_label(height: int, width: int, class_id: int, border: int | None) -> np.ndarray:
    """Background 0 with a box of `class_id`, outlined by 255 (VOC's object borders) if `border`."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = class_id
    if border is not None:
        label[height // 4 - 1, width // 4 - 1 : 3 * width // 4 + 1] = border
        label[3 * height // 4, width // 4 - 1 : 3 * width // 4 + 1] = border
        label[height // 4 - 1 : 3 * height // 4 + 1, width // 4 - 1] = border
        label[height // 4 - 1 : 3 * height // 4 + 1, 3 * width // 4] = border
    return label


def save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95, subsampling=0)


def save_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A grey ("L") PNG, or a palette ("P") PNG when `palette` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette.tobytes())
    image.save(path)


VOC_SIZES = {"2007_000032": (30, 40), "2007_000039": (36, 28), "2008_000123": (24, 32)}


@pytest.fixture
def voc(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A tiny VOC2012 folder; returns root and {name: (image, label, aug label)}."""
    root = tmp_path / "VOC2012"
    truth = {}
    for k, (name, (h, w)) in enumerate(VOC_SIZES.items()):
        image = smooth_image(h, w, 20 * k)
        label = boxed_label(h, w, class_id=k + 1, border=255)
        label[0, 0] = 15  # person
        aug = boxed_label(h, w, class_id=20 - k, border=None)
        save_jpeg(root / "JPEGImages" / f"{name}.jpg", image)
        save_png(root / "SegmentationClass" / f"{name}.png", label, voc_palette())
        save_png(root / "SegmentationClassAug" / f"{name}.png", aug)
        truth[name] = (image, label, aug)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n")
    (lists / "val.txt").write_text("2007_000039\n2008_000123\n")
    aug_lists = root / "ImageSets" / "SegmentationAug"
    aug_lists.mkdir(parents=True)
    (aug_lists / "train_aug.txt").write_text(
        "2007_000032\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n\n"
        "2008_000123\n"
    )
    return root, truth


def assert_jpeg_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    assert actual.dtype == torch.uint8 and tuple(actual.shape) == (3, *expected.shape[:2])
    diff = np.abs(actual.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
    assert diff.mean() < 2.0 and diff.max() <= 16, (diff.mean(), diff.max())


CITYSCAPES_FILES = {
    "train": [("aachen", "aachen_000000_000019")],
    "val": [("frankfurt", "frankfurt_000000_000294"), ("frankfurt", "frankfurt_000000_000576"),
            ("lindau", "lindau_000000_000019")],
}  # fmt: skip


def label_id_pattern(height: int, width: int, shift: int) -> np.ndarray:
    """Every Cityscapes label id 0..33, in diagonal stripes."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x + y + shift) % 34).astype(np.uint8)


@pytest.fixture
def cityscapes(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A tiny Cityscapes folder; returns root and {stem: (image, label ids)}."""
    root = tmp_path / "cityscapes"
    truth = {}
    for split, files in CITYSCAPES_FILES.items():
        for k, (city, stem) in enumerate(files):
            image = smooth_image(16, 40, 30 * k)
            label_ids = label_id_pattern(16, 40, shift=k)
            Image.fromarray(image).save(_path(root, "leftImg8bit", split, city, stem, "leftImg8bit"))
            save_png(_path(root, "gtFine", split, city, stem, "gtFine_labelIds"), label_ids)
            truth[stem] = (image, label_ids)
    return root, truth


def _path(root: Path, kind: str, split: str, city: str, stem: str, suffix: str) -> Path:
    path = root / kind / split / city / f"{stem}_{suffix}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- VOC
def test_voc_reads_images_labels_names(voc):
    root, truth = voc
    dataset = VOCSegmentation(root, "val")
    assert len(dataset) == 2
    assert (dataset.num_classes, dataset.ignore_index) == (21, 255)
    assert dataset.class_names == VOC_CLASSES and dataset.class_names[15] == "person"
    for index, name in enumerate(["2007_000039", "2008_000123"]):
        sample = dataset[index]
        image, label, _ = truth[name]
        assert sample["name"] == name
        assert_jpeg_close(sample["image"], image)
        assert sample["label"].dtype == torch.int64
        np.testing.assert_array_equal(sample["label"].numpy(), label)
        assert set(np.unique(sample["label"].numpy())) == {0, index + 2, 15, 255}
    assert dataset[-1]["name"] == "2008_000123"
    with pytest.raises(IndexError):
        dataset[2]


@pytest.mark.parametrize("split", ["trainaug", "train_aug"])
def test_voc_trainaug_reads_both_list_formats_and_aug_labels(voc, split):
    root, truth = voc
    dataset = VOCSegmentation(root, split)
    names = [dataset[i]["name"] for i in range(len(dataset))]
    assert names == ["2007_000032", "2007_000039", "2008_000123"]
    for i, name in enumerate(names):
        image, _, aug = truth[name]
        assert_jpeg_close(dataset[i]["image"], image)
        np.testing.assert_array_equal(dataset[i]["label"].numpy(), aug)


def test_voc_palette_and_colorize_round_trip(tmp_path):
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128] and palette[255].tolist() == [224, 224, 192]
    assert len({tuple(colour) for colour in palette[:21]}) == 21
    label = boxed_label(10, 12, class_id=7, border=255)
    image = colorize(label, cityscapes_palette())
    assert image.mode == "P"
    image.save(tmp_path / "pred.png")
    reread = Image.open(tmp_path / "pred.png")
    np.testing.assert_array_equal(np.asarray(reread), label)
    np.testing.assert_array_equal(np.asarray(reread.convert("RGB"))[5, 6], cityscapes_palette()[7])
    assert np.asarray(colorize(label).convert("RGB"))[5, 6].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match="255"):
        colorize(np.full((2, 2), 256))


# --------------------------------------------------------------------------- Cityscapes
def test_cityscapes_label_id_to_train_id_mapping():
    known = {  # label id -> train id, from cityscapesscripts' labels.py
        0: 255, 1: 255, 4: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 14: 255, 17: 5,
        18: 255, 19: 6, 23: 10, 24: 11, 26: 13, 29: 255, 30: 255, 31: 16, 33: 18,
    }  # fmt: skip
    ids = np.array(list(known), dtype=np.uint8)
    np.testing.assert_array_equal(label_ids_to_train_ids(ids), list(known.values()))
    assert sorted(LABEL_ID_TO_TRAIN_ID.values()) == list(range(19))
    all_ids = label_ids_to_train_ids(np.arange(34, dtype=np.uint8))
    assert sorted(all_ids[all_ids != 255].tolist()) == list(range(19))
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[18] == "bicycle"
    assert cityscapes_palette()[0].tolist() == [128, 64, 128]
    assert cityscapes_palette()[13].tolist() == [0, 0, 142]


def test_cityscapes_reads_images_and_train_ids(cityscapes):
    root, truth = cityscapes
    dataset = Cityscapes(root, "val")
    assert len(dataset) == 3 and dataset.num_classes == 19 and dataset.ignore_index == 255
    names = [dataset[i]["name"] for i in range(3)]
    assert names == [stem for _, stem in CITYSCAPES_FILES["val"]]
    for i, name in enumerate(names):
        image, label_ids = truth[name]
        sample = dataset[i]
        np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), image)  # PNG
        label = sample["label"].numpy()
        expected = np.full(label_ids.shape, 255)
        for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
            expected[label_ids == label_id] = train_id
        np.testing.assert_array_equal(label, expected)
        assert label[label_ids == 26].tolist() == [13] * int((label_ids == 26).sum())  # car
        assert (label[label_ids == 0] == 255).all()  # unlabeled
    assert len(Cityscapes(root, "train")) == 1


# --------------------------------------------------------------------------- errors
def _error_message(excinfo: pytest.ExceptionInfo) -> str:
    assert isinstance(excinfo.value, DatasetError)
    return str(excinfo.value)


def test_missing_dataset_folders_and_list_files_name_the_path(voc, cityscapes, tmp_path):
    voc_root, _ = voc
    city_root, _ = cityscapes
    cases = [
        (lambda: VOCSegmentation(tmp_path / "nowhere", "val"), tmp_path / "nowhere"),
        (lambda: VOCSegmentation(voc_root, "test"),
         voc_root / "ImageSets" / "Segmentation" / "test.txt"),
        (lambda: Cityscapes(tmp_path / "nowhere", "val"), tmp_path / "nowhere"),
        (lambda: Cityscapes(city_root, "test"), city_root / "leftImg8bit" / "test"),
    ]  # fmt: skip
    for make, path in cases:
        with pytest.raises(FileNotFoundError) as excinfo:
            make()
        assert str(path) in _error_message(excinfo)
    (voc_root / "ImageSets" / "SegmentationAug" / "train_aug.txt").unlink()
    with pytest.raises(DatasetError, match="train_aug.txt"):
        VOCSegmentation(voc_root, "trainaug")


@pytest.mark.parametrize(
    "missing", ["JPEGImages/2008_000123.jpg", "SegmentationClass/2007_000039.png"]
)
def test_voc_missing_image_or_label_names_the_path(voc, missing):
    root, _ = voc
    (root / missing).unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        VOCSegmentation(root, "val")
    assert str(root / missing) in _error_message(excinfo)


def test_cityscapes_missing_label_names_the_path(cityscapes):
    root, _ = cityscapes
    label = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        Cityscapes(root, "val")
    assert str(label) in _error_message(excinfo)


def test_voc_malformed_list_line_names_the_file(voc):
    root, _ = voc
    list_file = root / "ImageSets" / "Segmentation" / "val.txt"
    list_file.write_text("2007_000039\na b c\n")
    with pytest.raises(DatasetError) as excinfo:
        VOCSegmentation(root, "val")
    assert f"{list_file}, line 2" in str(excinfo.value)
    list_file.write_text("\n")
    with pytest.raises(DatasetError, match="lists no images"):
        VOCSegmentation(root, "val")


def _corrupt(path: Path) -> None:
    path.write_bytes(b"this is not an image file at all")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resize_label(path: Path) -> None:
    save_png(path, boxed_label(10, 10, 3, 255), voc_palette())


def _out_of_range_label(path: Path) -> None:
    label = boxed_label(*VOC_SIZES["2007_000039"], class_id=30, border=255)
    save_png(path, label, voc_palette())


def _rgb_label(path: Path) -> None:
    colours = voc_palette()[boxed_label(*VOC_SIZES["2007_000039"], class_id=2, border=255)]
    Image.fromarray(colours).save(path)


@pytest.mark.parametrize(
    "file, damage, words",
    [
        ("JPEGImages/2007_000039.jpg", _corrupt, "cannot read image"),
        ("JPEGImages/2007_000039.jpg", _truncate, "cannot read image"),
        ("SegmentationClass/2007_000039.png", _corrupt, "cannot read label"),
        ("SegmentationClass/2007_000039.png", _truncate, "cannot read label"),
        ("SegmentationClass/2007_000039.png", _resize_label, "but label"),
        ("SegmentationClass/2007_000039.png", _out_of_range_label, "values [30] outside [0, 21)"),
        ("SegmentationClass/2007_000039.png", _rgb_label, "mode 'RGB'"),
    ],
)
def test_voc_bad_files_name_the_path(voc, file, damage, words):
    root, _ = voc
    damage(root / file)
    dataset = VOCSegmentation(root, "val")
    dataset[1]  # the other sample is fine
    with pytest.raises(DatasetError) as excinfo:
        dataset[0]
    message = str(excinfo.value)
    assert str(root / file) in message and words in message
    if damage is _resize_label:  # both files named, with both sizes
        assert str(root / "JPEGImages/2007_000039.jpg") in message
        assert "28x36" in message and "10x10" in message


def test_voc_label_vanished_after_listing_names_the_path(voc):
    root, _ = voc
    dataset = VOCSegmentation(root, "val")
    (root / "SegmentationClass/2008_000123.png").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000123.png"):
        dataset[1]


def test_cityscapes_bad_labels_name_the_path(cityscapes):
    root, _ = cityscapes
    label_path = root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    bad = label_id_pattern(16, 40, shift=0)
    bad[3, 3] = 40
    save_png(label_path, bad)
    with pytest.raises(DatasetError) as excinfo:
        Cityscapes(root, "val")[0]
    assert str(label_path) in str(excinfo.value) and "[40]" in str(excinfo.value)
    save_png(label_path, label_id_pattern(16, 40, shift=0), voc_palette())  # a "P" PNG
    with pytest.raises(DatasetError) as excinfo:
        Cityscapes(root, "val")[0]
    assert str(label_path) in str(excinfo.value) and "mode 'P'" in str(excinfo.value)


# --------------------------------------------------------------------------- TrainAugment
def augment_many(augment: TrainAugment, image, label, seeds=range(12)):
    return [augment(image, label, torch.Generator().manual_seed(seed)) for seed in seeds]


def test_train_augment_output_shapes_and_dtypes():
    augment = TrainAugment(crop_size=33, scale_range=(0.5, 1.5))
    for height, width in [(80, 60), (20, 50), (5, 7)]:
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
        label = torch.randint(0, 21, (height, width))
        for out_image, out_label in augment_many(augment, image, label):
            assert out_image.dtype == torch.uint8 and out_image.shape == (3, 33, 33)
            assert out_label.dtype == torch.int64 and out_label.shape == (33, 33)
            assert out_image.is_contiguous() and out_label.is_contiguous()


def test_train_augment_pads_with_mean_colour_and_ignore():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    label = torch.randint(0, 5, (20, 30))
    augment = TrainAugment(crop_size=48, scale_range=(1.0, 1.0), flip=False, pad_rgb=PAD_RGB)
    out_image, out_label = augment(image, label, torch.Generator().manual_seed(0))
    assert torch.equal(out_image[:, :20, :30], image) and torch.equal(out_label[:20, :30], label)
    pad = torch.ones(48, 48, dtype=torch.bool)
    pad[:20, :30] = False
    for channel, value in enumerate(PAD_RGB):
        assert (out_image[channel][pad] == value).all()
    assert (out_label[pad] == 255).all()
    # Scaled down to 20 x 20 (0.5 of 40 x 40) inside a 32 x 32 crop: 12-pixel padding.
    halved_image, halved_label = TrainAugment(32, (0.5, 0.5), False, PAD_RGB, ignore_index=255)(
        torch.full((3, 40, 40), 7, dtype=torch.uint8), torch.full((40, 40), 3)
    )
    assert (halved_image[:, :20, :20] == 7).all() and (halved_label[:20, :20] == 3).all()
    assert (halved_label[20:] == 255).all() and (halved_label[:, 20:] == 255).all()
    assert halved_image[:, 20:, :].permute(1, 2, 0).reshape(-1, 3).unique(dim=0).tolist() == [
        list(PAD_RGB)
    ]


def test_train_augment_resizes_image_bilinearly_and_label_nearest():
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 24, 30), dtype=torch.uint8, generator=generator)
    label = torch.tensor([0, 3, 7, 255])[torch.randint(0, 4, (24, 30), generator=generator)]
    augment = TrainAugment(crop_size=50, scale_range=(0.5, 1.5), flip=False)
    for seed in range(10):
        scale = 0.5 + torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
        size = (int(24 * scale + 0.5), int(30 * scale + 0.5))  # fits the crop: no crop offset
        out_image, out_label = augment(image, label, torch.Generator().manual_seed(seed))
        expected = F.interpolate(image[None].float(), size, mode="bilinear", align_corners=False)
        expected = expected[0].round().clamp(0, 255).to(torch.uint8)
        assert torch.equal(out_image[:, : size[0], : size[1]], expected)
        nearest = F.interpolate(label[None, None].float(), size, mode="nearest-exact")[0, 0].long()
        assert torch.equal(out_label[: size[0], : size[1]], nearest)
        assert set(out_label.unique().tolist()) <= {0, 3, 7, 255}


def test_train_augment_keeps_image_and_label_aligned_through_scale_crop_flip():
    # Left part label 1 / dark, right part label 2 / bright: the edges must stay together.
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    image[:, :, 50:] = 200
    label = torch.ones(60, 80, dtype=torch.int64)
    label[:, 50:] = 2
    augment = TrainAugment(crop_size=41, scale_range=(0.7, 1.3))
    flipped = 0
    for out_image, out_label in augment_many(augment, image, label, range(40)):
        bright = out_image[0] > 100
        assert torch.equal(bright.any(0), bright.all(0))  # columns stay columns
        in_label_2 = (out_label == 2)[0]
        disagree = (bright[0] != in_label_2).sum().item()
        assert disagree <= 1  # the edge's column may round either way
        assert torch.equal(out_label == 2, in_label_2.expand(41, 41))
        flipped += int(bool(in_label_2.any() and in_label_2[0] and not in_label_2[-1]))
    assert flipped > 0  # the bright side was seen on the left: flips happen


def test_train_augment_flip_moves_image_and_label_together():
    label = torch.randint(0, 6, (4, 5)).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 16 x 20
    image = (label * 40).to(torch.uint8).expand(3, 16, 20).clone()
    augment = TrainAugment(crop_size=16, scale_range=(1.0, 1.0), flip=True)
    seen = set()
    for out_image, out_label in augment_many(augment, image, label, range(30)):
        assert torch.equal(out_image[1].long(), out_label * 40)
        left = next(left for left in range(5) if torch.equal(out_label, label[:, left : left + 16])
                    or torch.equal(out_label, label[:, left : left + 16].flip(-1)))
        seen.add(torch.equal(out_label, label[:, left : left + 16]))
    assert seen == {True, False}


def test_train_augment_rejects_bad_arguments():
    with pytest.raises(ValueError):
        TrainAugment(crop_size=0)
    with pytest.raises(ValueError):
        TrainAugment(scale_range=(1.5, 0.5))
    with pytest.raises(ValueError):
        TrainAugment(pad_rgb=(0, 0, 300))
    with pytest.raises(ValueError, match="uint8"):
        TrainAugment()(torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.int64))


def test_index_seed_tuples_make_augmentation_reproducible():
    dataset = SyntheticShapes(6, image_size=48, transform=TrainAugment(40, (0.5, 1.5)))
    state = torch.get_rng_state()
    first, again = dataset[(2, 123)], dataset[(2, 123)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    outputs = {dataset[(2, seed)]["image"].numpy().tobytes() for seed in range(8)}
    assert len(outputs) >= 7
    torch.manual_seed(5)
    global_first = dataset[2]
    torch.manual_seed(5)
    assert torch.equal(dataset[2]["image"], global_first["image"])
    assert not torch.equal(dataset[2]["image"], global_first["image"])  # the RNG moved on


def test_index_seed_tuples_give_the_same_batches_with_any_number_of_workers():
    dataset = SyntheticShapes(8, image_size=32, transform=TrainAugment(24, (0.5, 1.5)))
    sampler = [(index, 1000 + position) for position, index in enumerate([3, 1, 4, 1, 5, 7])]

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)
        return [torch.cat([batch["image"].flatten(), batch["label"].flatten()]) for batch in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 3 and all(torch.equal(a, b) for a, b in zip(serial, parallel))


# --------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_per_seed_split_index():
    dataset = SyntheticShapes(10, image_size=64, seed=3)
    sample = dataset[4]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    assert sample["label"].shape == (64, 64) and sample["label"].dtype == torch.int64
    assert sample["name"] == "train_000004"
    same = SyntheticShapes(10, image_size=64, seed=3)[4]
    assert torch.equal(sample["image"], same["image"]) and torch.equal(sample["label"], same["label"])
    for other in [dataset[5], SyntheticShapes(10, 64, seed=4)[4], SyntheticShapes(10, 64, 3, split="val")[4]]:
        assert not torch.equal(sample["image"], other["image"])
    assert dataset.num_classes == 5 and len(dataset.class_names) == 5
    assert dataset.palette.shape == (256, 3) and len({tuple(c) for c in dataset.palette[:5]}) == 5


def _synthetic_arrays(count: int, seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    dataset = SyntheticShapes(count, image_size=size, seed=seed)
    samples = [dataset.load(i) for i in range(count)]
    return np.stack([s[0] for s in samples]).astype(int), np.stack([s[1] for s in samples])


def test_synthetic_covers_all_classes_in_all_colours():
    images, labels = _synthetic_arrays(60, seed=0)
    assert set(np.unique(labels).tolist()) == set(range(5))
    assert all(len(np.unique(label)) >= 2 for label in labels)
    nearest_colour = np.abs(images[..., None, :] - COLOURS.astype(int)).max(-1).argmin(-1)
    for class_id in range(5):  # every class, background included, in every shared colour
        assert set(np.unique(nearest_colour[labels == class_id]).tolist()) == set(range(8))
    fractions = np.bincount(labels.ravel(), minlength=5) / labels.size
    assert 0.5 < fractions[0] < 0.85 and (fractions[1:] > 0.03).all()


def test_synthetic_colour_alone_does_not_tell_the_class():
    """A colour -> class lookup table (RGB in 8x8x8 bins), fitted on 120 images, tested on 60."""
    train_images, train_labels = _synthetic_arrays(120, seed=10)
    test_images, test_labels = _synthetic_arrays(60, seed=11)

    def bins(images: np.ndarray) -> np.ndarray:
        quantised = images // 32
        return (quantised[..., 0] * 64 + quantised[..., 1] * 8 + quantised[..., 2]).ravel()

    def lookup_table(keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
        counts = np.zeros((512, 5))
        np.add.at(counts, (keys, labels), 1)
        return counts.argmax(1)

    train_keys, train_y = bins(train_images), train_labels.ravel()
    test_keys, test_y = bins(test_images), test_labels.ravel()
    shape = test_y > 0
    predicted = lookup_table(train_keys, train_y)[test_keys]
    assert (predicted == test_y)[shape].mean() < 0.1  # colour never says "this is a shape"
    # Told which pixels are shapes, colour still barely beats guessing the commonest shape.
    is_shape = train_y > 0
    predicted = lookup_table(train_keys[is_shape], train_y[is_shape])[test_keys[shape]]
    commonest = np.bincount(test_y[shape]).max() / shape.sum()
    assert (predicted == test_y[shape]).mean() < commonest + 0.08


def test_synthetic_boundaries_are_sharp_and_textures_moderate():
    images, labels = _synthetic_arrays(150, seed=2)
    for axis in (1, 2):
        step = np.abs(np.diff(images, axis=axis)).max(-1)
        boundary = np.diff(labels.astype(int), axis=axis) != 0
        assert step[boundary].min() >= 50  # every class boundary is a colour edge
        inside = step[~boundary]
        assert np.quantile(inside, 0.99) <= 20 and (inside >= 50).mean() < 0.01
    # Textures: every pixel within 16 (+ rounding) of a shared colour, most of them visibly off it.
    deviation = np.abs(images[..., None, :] - COLOURS.astype(int)).max(-1).min(-1)
    assert deviation.max() <= 17 and (deviation >= 4).mean() > 0.25


def test_synthetic_generation_is_fast():
    dataset = SyntheticShapes(30, image_size=96)
    dataset.load(0)
    timings = []
    for _ in range(3):  # CPU time, best of 3: robust to other processes on the machine
        start = time.process_time()
        for index in range(30):
            dataset[index]
        timings.append((time.process_time() - start) / 30)
    print(f"synthetic 96x96 sample: {min(timings) * 1e3:.2f} ms CPU")
    assert min(timings) < 0.02


def test_synthetic_with_transform_and_bad_arguments():
    dataset = SyntheticShapes(3, image_size=32, transform=TrainAugment(40, (1.0, 1.0), False))
    sample = dataset[(0, 0)]
    assert sample["image"].shape == (3, 40, 40) and (sample["label"][32:] == 255).all()
    with pytest.raises(ValueError):
        SyntheticShapes(-1)
    with pytest.raises(ValueError):
        SyntheticShapes(4, seed=-1)


# --------------------------------------------------------------------------- build_datasets
def test_build_datasets_synthetic():
    config = DataConfig(dataset="synthetic", crop_size=40, scale_range=(0.75, 1.25), flip=False,
                        synthetic_image_size=48, synthetic_train_samples=8,
                        synthetic_val_samples=4, synthetic_seed=7)  # fmt: skip
    train, val = build_datasets(config, PAD_RGB)
    assert isinstance(train, SyntheticShapes) and isinstance(val, SyntheticShapes)
    assert (len(train), len(val)) == (8, 4)
    augment = train.transform
    assert isinstance(augment, TrainAugment) and val.transform is None
    assert (augment.crop_size, augment.scale_range, augment.flip) == (40, (0.75, 1.25), False)
    assert augment.pad_rgb == PAD_RGB and augment.ignore_index == 255
    assert train[(0, 0)]["image"].shape == (3, 40, 40) and val[0]["image"].shape == (3, 48, 48)
    assert train.seed == val.seed == 7
    train_images = {train.load(i)[0].tobytes() for i in range(4)}
    assert not train_images & {val.load(i)[0].tobytes() for i in range(4)}


def test_build_datasets_voc_and_cityscapes(voc, cityscapes):
    voc_root, _ = voc
    train, val = build_datasets(DataConfig(dataset="voc", root=str(voc_root), crop_size=20), PAD_RGB)
    assert isinstance(train, VOCSegmentation) and (len(train), len(val)) == (3, 2)
    assert train[0]["image"].shape == (3, 20, 20) and val[0]["image"].shape == (3, 36, 28)
    city_root, _ = cityscapes
    config = DataConfig(dataset="cityscapes", root=str(city_root), train_split="train", crop_size=12)
    train, val = build_datasets(config, PAD_RGB)
    assert isinstance(val, Cityscapes) and (len(train), len(val)) == (1, 3)
    assert train[0]["label"].shape == (12, 12) and val[0]["label"].shape == (16, 40)



def test_build_val_dataset_does_not_need_the_training_split(voc, tmp_path):
    """Evaluation reads the val split only: a VOC folder without SBD's trainaug list works."""
    voc_root, _ = voc
    config = DataConfig(dataset="voc", root=str(voc_root), train_split="no_such_split")
    with pytest.raises(FileNotFoundError, match="no_such_split"):
        build_datasets(config, PAD_RGB)
    val = build_val_dataset(config)
    assert isinstance(val, VOCSegmentation) and len(val) == 2 and val.transform is None
    with pytest.raises(DatasetError, match="data.root"):
        build_val_dataset(DataConfig(dataset="cityscapes", root=None))


def test_build_datasets_errors(tmp_path):
    with pytest.raises(DatasetError, match="data.root"):
        build_datasets(DataConfig(dataset="voc", root=None), PAD_RGB)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        build_datasets(DataConfig(dataset="cityscapes", root=str(tmp_path / "missing")), PAD_RGB)
    with pytest.raises(DatasetError, match="unknown dataset 'coco'"):
        build_datasets(DataConfig(dataset="coco"), PAD_RGB)
    with pytest.raises(DatasetError, match="ignore_index"):
        build_datasets(DataConfig(dataset="synthetic", ignore_index=0), PAD_RGB)


def test_dataset_info():
    for name, dataset in [("voc", VOCSegmentation), ("cityscapes", Cityscapes),
                          ("synthetic", SyntheticShapes)]:  # fmt: skip
        num_classes, class_names, palette = dataset_info(name)
        assert num_classes == dataset.num_classes == len(class_names)
        assert class_names == dataset.class_names and palette is dataset.palette
    assert dataset_info("voc")[0] == 21 and dataset_info("cityscapes")[0] == 19
    with pytest.raises(DatasetError):
        dataset_info("ade20k")
