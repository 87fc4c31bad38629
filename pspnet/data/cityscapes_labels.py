"""Cityscapes label definitions: the 34 ``labelIds`` and their 19 training ids.

``*_gtFine_labelIds.png`` holds ids 0..33; training uses 19 classes (``trainId`` 0..18) and maps the
rest to the ignore index. :func:`id_to_train_id_lut` gives that mapping as a lookup table.
"""

from __future__ import annotations

import torch

__all__ = ["LABELS", "CITYSCAPES_CLASSES", "id_to_train_id_lut"]

# (name, labelId, trainId); trainId 255 = ignored in training and evaluation
LABELS = [
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
]

CITYSCAPES_CLASSES = [name for name, _, tid in sorted(LABELS, key=lambda x: x[2]) if tid != 255]


def id_to_train_id_lut(ignore_index: int = 255, size: int = 256) -> torch.Tensor:
    """int64 lookup table ``lut[label_id] -> train_id``; ids without a train id (and every
    value >= 34) map to ``ignore_index``."""
    lut = torch.full((size,), ignore_index, dtype=torch.int64)
    for _, lid, tid in LABELS:
        if tid != 255:
            lut[lid] = tid
    return lut
