"""SyntheticShapes: a built-in segmentation dataset of random shapes (no download).

Each image is a noisy, smoothly varying background with a few random shapes drawn on it; every
shape kind is one class (background = 0), and the label is the exact mask of what was drawn
(later shapes occlude earlier ones). Sample ``i`` is generated from its own ``torch.Generator``
seeded from ``(seed, split, i)``, so the same seed gives identical data in any order, on any
machine, and the train and val splits never share a sample.
"""

from __future__ import annotations

import math

import torch

from .seeding import mix

__all__ = ["SyntheticShapes", "SHAPE_CLASSES"]

SHAPE_CLASSES = ["background", "circle", "rectangle", "triangle", "ellipse", "ring", "cross"]

# a base colour per class; shapes get this plus jitter, so colour is a cue but not the only one
_BASE_COLOURS = [
    (0, 0, 0),
    (220, 60, 60),
    (60, 200, 70),
    (70, 90, 230),
    (230, 200, 50),
    (200, 70, 210),
    (60, 210, 220),
]

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


class SyntheticShapes(torch.utils.data.Dataset):
    """Random shapes on textured backgrounds, with exact masks.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (each split has its own stream of samples).
        length: number of samples (default 512 for train, 128 otherwise).
        size: image side (int) or ``(h, w)``; default 65 (``8n + 1``, PSPNet-friendly).
        num_classes: 2..7 classes including background; class ``k`` is ``SHAPE_CLASSES[k]``.
        max_shapes: each image holds 1..max_shapes shapes.
        seed: base seed; the same seed gives identical data.
        noise: standard deviation of the per-pixel noise (0..255 scale).
        transform: optional ``t(image, label) -> (image, label)`` applied to every sample.
        cache: keep generated (untransformed) samples in memory.

    ``ds[i]`` is ``(image, label)``: float32 ``(3, H, W)`` RGB in 0..255 and int64 ``(H, W)``.
    ``ds.sample(i)`` also returns the list of drawn shapes ``(class_id, mask, colour)`` in drawing
    order (``mask`` bool ``(H, W)``, ``colour`` float64 ``(3,)``: the mean fill colour before
    clamping to 0..255).
    """

    def __init__(
        self,
        split="train",
        length=None,
        size=65,
        num_classes=6,
        max_shapes=4,
        seed=0,
        noise=12.0,
        transform=None,
        cache=True,
        ignore_index=255,
    ):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if length is None:
            length = 512 if split == "train" else 128
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative int, got {length!r}")
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size must be an int or (h, w) pair >= 8, got {size!r}")
        if not 2 <= num_classes <= len(SHAPE_CLASSES):
            raise ValueError(
                f"num_classes must be in [2, {len(SHAPE_CLASSES)}] (background + shapes), "
                f"got {num_classes}"
            )
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.split = split
        self.length = length
        self.size = (int(size[0]), int(size[1]))
        self.num_classes = int(num_classes)
        self.max_shapes = int(max_shapes)
        self.seed = int(seed)
        self.noise = float(noise)
        self.transform = transform
        self.ignore_index = int(ignore_index)
        self.class_names = SHAPE_CLASSES[: self.num_classes]
        self.files = None
        self._cache = {} if cache else None

    def __len__(self):
        return self.length

    def __repr__(self):
        return (
            f"SyntheticShapes(split={self.split!r}, length={self.length}, size={self.size}, "
            f"num_classes={self.num_classes}, seed={self.seed})"
        )

    def generator(self, index: int) -> torch.Generator:
        """The generator that sample ``index`` is drawn from."""
        return torch.Generator().manual_seed(mix(self.seed, _SPLIT_IDS[self.split], index))

    def __getitem__(self, index):
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        index = index % self.length if self.length else index
        if self._cache is not None and index in self._cache:
            image, label = self._cache[index]
        else:
            image, label, _ = self.sample(index)
            if self._cache is not None:
                self._cache[index] = (image, label)
        image, label = image.clone(), label.clone()
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def sample(self, index: int):
        """Generate sample ``index``: ``(image, label, shapes)`` with ``shapes`` a list of
        ``(class_id, mask, colour)`` in drawing order."""
        g = self.generator(index)
        h, w = self.size
        rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)

        # background: a random base colour, a smooth low-frequency pattern and per-pixel noise
        base = 40 + 120 * rand(3, 1, 1)
        coarse = torch.nn.functional.interpolate(
            (rand(1, 3, 4, 4) - 0.5) * 80, size=(h, w), mode="bicubic", align_corners=False
        )[0]
        image = base + coarse + self.noise * torch.randn(3, h, w, generator=g, dtype=torch.float64)
        label = torch.zeros(h, w, dtype=torch.int64)

        ys = torch.arange(h, dtype=torch.float64).view(h, 1) + 0.5
        xs = torch.arange(w, dtype=torch.float64).view(1, w) + 0.5
        side = min(h, w)
        n_shapes = 1 + int(rand(1) * self.max_shapes)
        shapes = []
        for _ in range(n_shapes):
            cls = 1 + int(rand(1) * (self.num_classes - 1))
            mask = self._shape_mask(cls, ys, xs, h, w, side, rand)
            if not bool(mask.any()):  # pragma: no cover - radii are large enough
                continue
            colour = torch.tensor(_BASE_COLOURS[cls], dtype=torch.float64).view(3, 1, 1)
            colour = colour + (rand(3, 1, 1) - 0.5) * 60
            texture = 0.5 * self.noise * torch.randn(3, h, w, generator=g, dtype=torch.float64)
            image = torch.where(mask, colour + texture, image)
            label[mask] = cls
            shapes.append((cls, mask, colour.flatten()))
        image = image.clamp(0, 255).to(torch.float32)
        return image, label, shapes

    @staticmethod
    def _shape_mask(cls, ys, xs, h, w, side, rand):
        r = side * (0.12 + 0.16 * float(rand(1)))  # characteristic radius
        cy = float(rand(1)) * h
        cx = float(rand(1)) * w
        angle = float(rand(1)) * math.pi
        c, s = math.cos(angle), math.sin(angle)
        dy, dx = ys - cy, xs - cx
        u = c * dx + s * dy  # rotated coordinates
        v = -s * dx + c * dy
        name = SHAPE_CLASSES[cls]
        if name == "circle":
            return dx**2 + dy**2 <= r**2
        if name == "rectangle":
            a = r * (0.7 + 0.5 * float(rand(1)))
            b = r * (0.5 + 0.3 * float(rand(1)))
            return (u.abs() <= a) & (v.abs() <= b)
        if name == "triangle":
            pts = [
                (
                    cx + r * math.cos(angle + k * 2 * math.pi / 3),
                    cy + r * 1.2 * math.sin(angle + k * 2 * math.pi / 3),
                )
                for k in range(3)
            ]
            signs = []
            for k in range(3):
                (x0, y0), (x1, y1) = pts[k], pts[(k + 1) % 3]
                signs.append((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0))
            pos = (signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)
            neg = (signs[0] <= 0) & (signs[1] <= 0) & (signs[2] <= 0)
            return pos | neg
        if name == "ellipse":
            a, b = r * 1.3, r * 0.55
            return (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if name == "ring":
            d2 = dx**2 + dy**2
            return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
        if name == "cross":
            arm, half = r, r * 0.3
            return ((u.abs() <= arm) & (v.abs() <= half)) | ((v.abs() <= arm) & (u.abs() <= half))
        raise AssertionError(name)  # pragma: no cover
