"""Segmentation samples from files: label maps, and the file-list datasets the named ones build on
(:class:`SegmentationDataset`, :class:`ListDataset`); the files themselves are read by
:mod:`pspnet.data.files`.

Every dataset returns ``(image, label)``: ``image`` float32 ``(3, H, W)`` RGB with values 0..255,
``label`` int64 ``(H, W)`` with class ids ``0..num_classes-1`` or ``ignore_index`` (255), then
passes them through the optional ``transform(image, label)``. Images are read as 8-bit RGB
(16-bit images scaled, see :func:`~pspnet.data.files.read_image`); labels are single-channel PNGs
(mode ``L`` or ``P``; the raw indices are used, never the palette colours).
"""

from __future__ import annotations

import os

import torch

from ..errors import UserError
from .cityscapes_labels import id_to_train_id_lut
from .files import check_listed, read_image, read_label, read_list_file

__all__ = [
    "SegmentationDataset",
    "ListDataset",
    "reduce_zero_label_lut",
]


def reduce_zero_label_lut(ignore_index: int = 255, size: int = 256) -> torch.Tensor:
    """Lookup table of ADE20K's "reduce zero label": 0 -> ignore, k -> k - 1, 255 stays ignore."""
    lut = torch.arange(size, dtype=torch.int64) - 1
    lut[0] = ignore_index
    if size > 255:
        lut[255] = ignore_index
    return lut


def _resolve_label_map(label_map, ignore_index):
    if label_map is None or callable(label_map) or isinstance(label_map, torch.Tensor):
        return label_map
    if label_map in ("reduce_zero_label", "ade20k"):
        return reduce_zero_label_lut(ignore_index)
    if label_map in ("cityscapes", "cityscapes_ids"):
        return id_to_train_id_lut(ignore_index)
    raise UserError(
        "label_map must be None, a lookup tensor, a callable, 'reduce_zero_label' (ADE20K) or "
        f"'cityscapes' (labelIds -> trainIds), got {label_map!r}"
    )


class SegmentationDataset(torch.utils.data.Dataset):
    """Pairs of (image file, label file) with label mapping, checks and an optional transform.

    Args:
        files: list of ``(image_path, label_path or None)``; a missing label gives an all-ignore
            label of the image's size (for test lists).
        num_classes: number of classes (labels must be in ``[0, num_classes)`` or ignore).
        ignore_index: label value ignored by loss and metrics.
        class_names: list of names (default ``class0, class1, ...``).
        transform: optional ``t(image, label) -> (image, label)``.
        check_labels: when a (mapped) label holds values outside ``[0, num_classes)`` other
            than ``ignore_index``: ``True`` raises ValueError naming the file and the values;
            ``False`` treats those pixels as ``ignore_index`` (left out of loss and metrics).
        label_map: None, an int64 lookup tensor (``lut[raw] -> class``), a callable
            ``f(label) -> label``, or ``"reduce_zero_label"`` / ``"cityscapes"``.
        sources: optional list of strings describing where each entry came from (list file and
            line), used in error messages.
    """

    def __init__(
        self,
        files,
        num_classes,
        ignore_index=255,
        class_names=None,
        transform=None,
        check_labels=True,
        label_map=None,
        sources=None,
    ):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise UserError(f"num_classes must be a positive int, got {num_classes!r}")
        self.files = [(str(i), None if lab is None else str(lab)) for i, lab in files]
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        if class_names is None:
            class_names = [f"class{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise UserError(
                f"class_names has {len(class_names)} entries but num_classes is {num_classes}"
            )
        self.class_names = list(class_names)
        self.transform = transform
        self.check_labels = bool(check_labels)
        self.label_map = _resolve_label_map(label_map, self.ignore_index)
        self.sources = sources

    @property
    def has_labels(self) -> bool:
        """True when every entry has a label file."""
        return all(lab is not None for _, lab in self.files)

    def __len__(self):
        return len(self.files)

    def _where(self, index):
        src = f", {self.sources[index]}" if self.sources else ""
        return f" (sample {index} of {len(self)}{src})"

    def map_label(self, label: torch.Tensor, index: int) -> torch.Tensor:
        """Map raw label values to class ids (``label_map``); override for per-file rules."""
        lm = self.label_map
        if lm is None:
            return label
        if isinstance(lm, torch.Tensor):
            hi = int(label.max()) if label.numel() else 0
            if hi >= lm.numel() or (label.numel() and int(label.min()) < 0):
                raise UserError(
                    f"label {self.files[index][1]}: value {hi} outside the label map's range "
                    f"[0, {lm.numel()}){self._where(index)}"
                )
            return lm[label]
        return lm(label)

    def _read(self, reader, path, index: int):
        """``reader(path)``; its error says which sample it was (the same type for a missing
        file or a folder, :class:`~pspnet.errors.UserError` for a bad one)."""
        try:
            return reader(path)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise type(e)(f"{e}{self._where(index)}") from None
        except ValueError as e:
            raise UserError(f"{e}{self._where(index)}") from None

    def load(self, index: int):
        """``(image, label)`` of entry ``index`` before the transform."""
        img_path, lab_path = self.files[index]
        image = self._read(read_image, img_path, index)
        h, w = image.shape[-2:]
        if lab_path is None:
            return image, torch.full((h, w), self.ignore_index, dtype=torch.int64)
        label = self._read(read_label, lab_path, index)
        if tuple(label.shape) != (h, w):
            raise UserError(
                f"label {lab_path} is {label.shape[1]}x{label.shape[0]} (WxH) but image "
                f"{img_path} is {w}x{h}{self._where(index)}"
            )
        label = self.map_label(label, index)
        bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
        if bool(bad.any()):
            if not self.check_labels:  # out-of-range pixels are not labelled: ignored
                return image, label.masked_fill(bad, self.ignore_index)
            vals = torch.unique(label[bad]).tolist()
            shown = ", ".join(str(v) for v in vals[:10]) + (" ..." if len(vals) > 10 else "")
            raise UserError(
                f"label {lab_path}: values [{shown}] outside [0, {self.num_classes}) "
                f"(ignore index {self.ignore_index}){self._where(index)}; "
                + self.label_hint(max(vals))
            )
        return image, label

    def label_hint(self, highest: int) -> str:
        """What to do about label values outside the class range (the end of the error)."""
        return (
            "fix the labels, or ignore those pixels with --dataset-opt check_labels=false "
            "(check_labels=False)"
        )

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, label = self.load(index % len(self))
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


class ListDataset(SegmentationDataset):
    """A dataset from a list file in the official format: one ``image_path label_path`` per line
    (or only ``image_path`` for unlabelled test lists), paths relative to ``root`` (default: the
    list file's folder) or absolute. Blank lines and lines starting with ``#`` are skipped.

    ``check_files=True`` checks at construction that every listed file exists and raises
    FileNotFoundError naming the path and the line number. Other arguments: see
    :class:`SegmentationDataset`.
    """

    def __init__(
        self,
        list_file,
        root=None,
        num_classes=None,
        transform=None,
        ignore_index=255,
        class_names=None,
        check_labels=True,
        label_map=None,
        check_files=True,
    ):
        list_file = os.fspath(list_file)
        entries = read_list_file(list_file)
        if num_classes is None:
            raise UserError("ListDataset: num_classes is required")
        root = os.path.dirname(os.path.abspath(list_file)) if root is None else os.fspath(root)
        files, sources = [], []
        for lineno, parts in entries:
            where = f"{list_file}, line {lineno}"
            if len(parts) > 2:
                raise UserError(
                    f"{where}: expected 'image_path [label_path]', got {len(parts)} columns"
                )
            img = os.path.join(root, parts[0])
            lab = os.path.join(root, parts[1]) if len(parts) == 2 else None
            if check_files:
                check_listed(where, img, lab)
            files.append((img, lab))
            sources.append(where)
        self.list_file = list_file
        self.root = root
        super().__init__(
            files,
            num_classes,
            ignore_index=ignore_index,
            class_names=class_names,
            transform=transform,
            check_labels=check_labels,
            label_map=label_map,
            sources=sources,
        )

    def label_hint(self, highest: int) -> str:
        n = highest + 1
        return f"if the dataset has {n} classes, pass --dataset-opt num_classes={n}; otherwise " + (
            super().label_hint(highest)
        )
