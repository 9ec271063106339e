"""Synthetic shapes: a segmentation dataset generated on the fly, to train and test without data.

Each image has a textured background and 3-6 shapes (disc, rectangle, triangle, ring) that may
overlap, later ones occluding earlier ones. Every region (the background and each shape) takes
its colour from one shared set of 8 colours and its texture (flat, sinusoidal stripes or smooth
noise, of moderate contrast) from one shared set, so neither colour nor texture tells the
classes apart: a network has to learn shape. A shape never takes a colour that lies under or
right next to it, so every object boundary is a sharp colour edge (large next to the texture
contrast), which a DenseCRF's bilateral kernel can snap to. Labels are exact per pixel (the
same masks draw the image). Sample i of a given (seed, split) is always the same image.
"""
from __future__ import annotations

import zlib

import numpy as np

from .common import SegmentationDataset, Transform
from .palette import SYNTHETIC_CLASSES, synthetic_palette

# The shared colour set: every pair differs by >= 100 in some channel.
COLOURS = np.array(
    [(200, 50, 50), (50, 160, 60), (50, 80, 200), (225, 205, 60),
     (150, 70, 180), (60, 190, 200), (220, 220, 220), (60, 60, 60)],
    dtype=np.float32,
)  # fmt: skip
TEXTURE_AMPLITUDE = (6.0, 16.0)  # peak brightness change of a texture, in 0-255 units
NUM_SHAPES = (3, 6)  # shapes per image, inclusive
_NOISE_GRID = 6  # control points per side of the smooth noise
_FOOTPRINT_MARGIN = 1.5  # pixels around a shape whose colours the shape may not take

# A shape: (signed distance to its outline, negative inside [S, S]; the same for its footprint,
# the region whose colours it must avoid: the shape itself, or a ring with its hole).
Shape = tuple[np.ndarray, np.ndarray]


class SyntheticShapes(SegmentationDataset):
    """`num_samples` generated images of `image_size` x `image_size` with 5 classes:
    background 0, disc 1, rectangle 2, triangle 3, ring 4 (no ignored pixels).

    Sample `index` is generated from `numpy.random.default_rng([seed, stream(split), index])`,
    so it depends only on (seed, split, index); `split` names independent streams (training and
    validation sets use different ones). About 1-2 ms per 96 x 96 sample.
    """

    num_classes = len(SYNTHETIC_CLASSES)
    class_names = SYNTHETIC_CLASSES
    palette = synthetic_palette()

    def __init__(
        self,
        num_samples: int,
        image_size: int = 96,
        seed: int = 0,
        transform: Transform | None = None,
        split: str = "train",
    ) -> None:
        super().__init__(transform)
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.split = split
        self._stream = zlib.crc32(split.encode())
        centres = np.arange(self.image_size, dtype=np.float32) + 0.5
        self._y, self._x = centres[:, None], centres[None, :]
        self._upsample = _linear_upsampling(_NOISE_GRID, self.image_size)

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Generates sample `index`: image uint8 [S, S, 3], label uint8 [S, S], name."""
        rng = np.random.default_rng([self.seed, self._stream, index])
        image, label = self.generate(rng)
        return image, label, f"{self.split}_{index:06d}"

    def generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One image uint8 [S, S, 3] and its label uint8 [S, S], drawn from `rng`."""
        size = self.image_size
        background = int(rng.integers(len(COLOURS)))
        colour_ids = np.full((size, size), background, dtype=np.int8)
        image = self._region_pixels(rng, background)
        label = np.zeros((size, size), dtype=np.uint8)
        shapes = (self._disc, self._rectangle, self._triangle, self._ring)  # class ids 1, 2, 3, 4
        for _ in range(int(rng.integers(NUM_SHAPES[0], NUM_SHAPES[1] + 1))):
            class_id = int(rng.integers(1, self.num_classes))
            distance, footprint = shapes[class_id - 1](rng)
            mask = distance <= 0
            allowed = np.ones(len(COLOURS), dtype=bool)
            allowed[colour_ids[footprint <= _FOOTPRINT_MARGIN]] = False
            choices = np.flatnonzero(allowed)
            colour = int(choices[rng.integers(len(choices))])
            np.copyto(image, self._region_pixels(rng, colour), where=mask[..., None])
            colour_ids[mask] = colour
            label[mask] = class_id
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), label

    # --------------------------------------------------------------------- textures
    def _region_pixels(self, rng: np.random.Generator, colour: int) -> np.ndarray:
        """A whole image [S, S, 3] float of one colour with a random texture."""
        kind = int(rng.integers(3))
        amplitude = rng.uniform(*TEXTURE_AMPLITUDE)
        if kind == 0:
            field = np.zeros((self.image_size, self.image_size), dtype=np.float32)
        elif kind == 1:
            field = self._stripes(rng)
        else:
            field = self._smooth_noise(rng)
        return COLOURS[colour] + (amplitude * field)[..., None]

    def _stripes(self, rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.06, 0.16) * self.image_size
        phase = rng.uniform(0, 2 * np.pi)
        along = self._x * np.cos(angle) + self._y * np.sin(angle)
        return np.sin(along * (2 * np.pi / period) + phase).astype(np.float32)

    def _smooth_noise(self, rng: np.random.Generator) -> np.ndarray:
        grid = rng.uniform(-1, 1, size=(_NOISE_GRID, _NOISE_GRID)).astype(np.float32)
        return self._upsample @ grid @ self._upsample.T

    # ----------------------------------------------------------------------- shapes
    def _centre(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Pixel offsets (dx [1, S], dy [S, 1]) from a random centre inside the image."""
        cx, cy = rng.uniform(0.1, 0.9, size=2) * self.image_size
        return self._x - cx, self._y - cy

    def _disc(self, rng: np.random.Generator) -> Shape:
        dx, dy = self._centre(rng)
        radius = rng.uniform(0.1, 0.22) * self.image_size
        distance = np.hypot(dx, dy) - radius
        return distance, distance

    def _rectangle(self, rng: np.random.Generator) -> Shape:
        dx, dy = self._centre(rng)
        half_width, half_height = rng.uniform(0.08, 0.22, size=2) * self.image_size
        angle = rng.uniform(0, np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        along, across = dx * cos + dy * sin, dy * cos - dx * sin
        distance = np.maximum(np.abs(along) - half_width, np.abs(across) - half_height)
        return distance, distance

    def _triangle(self, rng: np.random.Generator) -> Shape:
        dx, dy = self._centre(rng)
        radius = rng.uniform(0.16, 0.3) * self.image_size
        rotation = rng.uniform(0, 2 * np.pi)
        angles = rotation + np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.3, 0.3, size=3)
        vertices = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # counter-clockwise
        edges = np.roll(vertices, -1, axis=0) - vertices
        normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)  # outward for counter-clockwise
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        distance = np.full((self.image_size, self.image_size), -np.inf, dtype=np.float32)
        for (nx, ny), (vx, vy) in zip(normals, vertices):
            distance = np.maximum(distance, nx * (dx - vx) + ny * (dy - vy))
        return distance, distance

    def _ring(self, rng: np.random.Generator) -> Shape:
        dx, dy = self._centre(rng)
        outer = rng.uniform(0.14, 0.25) * self.image_size
        inner = outer * rng.uniform(0.45, 0.65)
        radius = np.hypot(dx, dy)
        return np.maximum(radius - outer, inner - radius), radius - outer


def _linear_upsampling(points: int, size: int) -> np.ndarray:
    """Matrix [size, points]: linear interpolation of `points` evenly spread samples at the
    centres of `size` pixels (the first and last sample on the first and last pixel)."""
    position = np.linspace(0, points - 1, size)
    lower = np.minimum(position.astype(int), points - 2)
    weight = position - lower
    matrix = np.zeros((size, points), dtype=np.float32)
    matrix[np.arange(size), lower] = 1 - weight
    matrix[np.arange(size), lower + 1] = weight
    return matrix
