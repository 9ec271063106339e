"""DeepLabV2's training augmentation on uint8 image / int64 label tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import IGNORE_INDEX


class TrainAugment:
    """Random scale, pad, random crop and random flip, as DeepLabV2's training data layer.

    1. Scale by a factor drawn uniformly from `scale_range`: the image bilinearly (in float,
       rounded back to uint8), the label with nearest neighbour (so only its own ids appear).
    2. Pad bottom and right up to `crop_size`: the image with `pad_rgb` (the mean colour, which
       becomes 0 after mean subtraction), the label with `ignore_index`.
    3. Crop a random `crop_size` x `crop_size` window.
    4. Flip image and label horizontally with probability 1/2 (if `flip`).

    Called as `(image uint8 [3, H, W], label int64 [H, W], generator) -> (image uint8 [3, crop,
    crop], label int64 [crop, crop])`; the random numbers come from `generator`, or torch's global
    RNG when it is None.
    """

    def __init__(
        self,
        crop_size: int = 321,
        scale_range: tuple[float, float] = (0.5, 1.5),
        flip: bool = True,
        pad_rgb: tuple[int, int, int] = (123, 117, 104),
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if len(pad_rgb) != 3 or not all(0 <= value <= 255 for value in pad_rgb):
            raise ValueError(f"pad_rgb must be three values in [0, 255], got {pad_rgb}")
        self.crop_size = int(crop_size)
        self.scale_range = (float(low), float(high))
        self.flip = bool(flip)
        self.pad_rgb = tuple(int(value) for value in pad_rgb)
        self.ignore_index = int(ignore_index)

    def __repr__(self) -> str:
        return (
            f"TrainAugment(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"flip={self.flip}, pad_rgb={self.pad_rgb}, ignore_index={self.ignore_index})"
        )

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augments one sample (see the class docstring)."""
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"expected a uint8 image [3, H, W], got {image.dtype} {list(image.shape)}"
            )
        if label.shape != image.shape[1:]:
            raise ValueError(f"label {list(label.shape)} does not match image {list(image.shape)}")
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand((), generator=generator).item()
        image, label = self._rescale(image, label, scale)
        image, label = self._pad(image, label)
        crop = self.crop_size
        height, width = label.shape
        top = int(torch.randint(height - crop + 1, (), generator=generator))
        left = int(torch.randint(width - crop + 1, (), generator=generator))
        image = image[:, top : top + crop, left : left + crop]
        label = label[top : top + crop, left : left + crop]
        if self.flip and torch.rand((), generator=generator).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()

    @staticmethod
    def _rescale(
        image: torch.Tensor, label: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = label.shape
        size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        if size == (height, width):
            return image, label
        scaled = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
        image = scaled[0].round_().clamp_(0, 255).to(torch.uint8)
        # Nearest neighbour with pixel centres aligned as in the bilinear resize (F.interpolate's
        # "nearest-exact"): source = floor((target + 0.5) * in / out), in exact integer arithmetic.
        rows = (2 * torch.arange(size[0]) + 1) * height // (2 * size[0])
        cols = (2 * torch.arange(size[1]) + 1) * width // (2 * size[1])
        return image, label[rows[:, None], cols[None, :]]

    def _pad(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = label.shape
        padded_height, padded_width = max(height, self.crop_size), max(width, self.crop_size)
        if (padded_height, padded_width) == (height, width):
            return image, label
        pad_colour = torch.tensor(self.pad_rgb, dtype=torch.uint8).view(3, 1, 1)
        padded_image = pad_colour.repeat(1, padded_height, padded_width)
        padded_image[:, :height, :width] = image
        padded_label = label.new_full((padded_height, padded_width), self.ignore_index)
        padded_label[:height, :width] = label
        return padded_image, padded_label
