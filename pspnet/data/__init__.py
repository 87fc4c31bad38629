"""Data for PSPNet training and evaluation: datasets, the built-in synthetic dataset, tensor
augmentations and a colour palette.

```python
from pspnet.data import build_dataset, train_transform, eval_transform, DATASETS
ds = build_dataset("synthetic", split="train", transform=train_transform(65))
image, label = ds[0]   # float32 (3, H, W) normalised, int64 (H, W) in [0, classes) or 255
```
"""

from __future__ import annotations

import torch

from .base import ListDataset, SegmentationDataset
from .datasets import (
    ADE20K,
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    DATASETS,
    VOC,
    VOC_CLASSES,
    Cityscapes,
    build_dataset,
)
from .files import read_image, read_label
from .synthetic import SHAPE_CLASSES, SyntheticShapes
from .transforms import (
    MEAN,
    STD,
    Compose,
    Crop,
    Normalize,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandRotate,
    RandScale,
    eval_transform,
    train_transform,
)


def palette(num_classes: int) -> torch.Tensor:
    """VOC-style colour palette: uint8 ``(num_classes, 3)``, the bits of the class id interleaved
    into the high bits of R, G and B (class 0 is black)."""
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    out = torch.zeros(num_classes, 3, dtype=torch.uint8)
    for i in range(num_classes):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        out[i] = torch.tensor(rgb, dtype=torch.uint8)
    return out


__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "SegmentationDataset",
    "VOC_CLASSES",
    "read_image",
    "read_label",
    "DATASETS",
    "MEAN",
    "SHAPE_CLASSES",
    "STD",
    "VOC",
    "Cityscapes",
    "Compose",
    "Crop",
    "ListDataset",
    "Normalize",
    "RandRotate",
    "RandScale",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "SyntheticShapes",
    "build_dataset",
    "eval_transform",
    "palette",
    "train_transform",
]
