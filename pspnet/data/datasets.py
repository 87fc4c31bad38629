"""File-backed segmentation datasets: list files, ADE20K, Cityscapes, PASCAL VOC 2012 (reading
the files and the list datasets are in :mod:`pspnet.data.base`).

Every dataset returns ``(image, label)``: ``image`` float32 ``(3, H, W)`` RGB with values 0..255,
``label`` int64 ``(H, W)`` with class ids ``0..num_classes-1`` or ``ignore_index`` (255), then
passes them through the optional ``transform(image, label)``. Images are read with Pillow and
converted to RGB; labels are single-channel PNGs (mode ``L`` or ``P``; the raw indices are used,
never the palette colours).

Attributes: ``num_classes``, ``ignore_index``, ``class_names``, ``files`` (list of
``(image_path, label_path_or_None)``), ``len(ds)``.
"""

from __future__ import annotations

import glob
import inspect
import os

from ..errors import UserError
from .base import ListDataset, SegmentationDataset, reduce_zero_label_lut
from .cityscapes_labels import CITYSCAPES_CLASSES, id_to_train_id_lut
from .files import check_listed, read_list_file
from .synthetic import SHAPE_CLASSES, SyntheticShapes

__all__ = [
    "ADE20K_CLASSES",
    "VOC_CLASSES",
    "CITYSCAPES_CLASSES",
    "DATASETS",
    "ADE20K",
    "Cityscapes",
    "VOC",
    "build_dataset",
]

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
]  # fmt: skip

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

# What each dataset is: classes, the official crop (train_h = train_w) and test base size, the
# ignore label and the class names. The training recipes built on them live in pspnet.config.
DATASETS = {
    "ade20k": dict(
        classes=150, crop_size=473, base_size=512, ignore_index=255, class_names=ADE20K_CLASSES
    ),
    "cityscapes": dict(
        classes=19, crop_size=713, base_size=2048, ignore_index=255,
        class_names=CITYSCAPES_CLASSES,
    ),
    "voc": dict(
        classes=21, crop_size=473, base_size=512, ignore_index=255, class_names=VOC_CLASSES
    ),
    "synthetic": dict(
        classes=6, crop_size=65, base_size=65, ignore_index=255, class_names=SHAPE_CLASSES[:6]
    ),
}  # fmt: skip


def _normalise_split(split, allowed, dataset):
    aliases = {"training": "train", "validation": "val", "valid": "val"}
    s = aliases.get(split, split)
    if s not in allowed:
        raise UserError(f"{dataset}: split must be one of {allowed}, got {split!r}")
    return s


class ADE20K(SegmentationDataset):
    """ADE20K (SceneParsing, ADEChallengeData2016), 150 classes.

    Layout: ``root/ADEChallengeData2016/images/{training,validation}/*.jpg`` with
    ``root/ADEChallengeData2016/annotations/{training,validation}/<same name>.png`` (``root`` may
    also be the ``ADEChallengeData2016`` folder itself). Labels are reduced: 0 (other) -> ignore,
    k -> k - 1.
    """

    def __init__(self, root, split="train", transform=None, check_labels=True, ignore_index=255):
        split = _normalise_split(split, ("train", "val"), "ADE20K")
        root = os.fspath(root)
        sub = {"train": "training", "val": "validation"}[split]
        base = os.path.join(root, "ADEChallengeData2016")
        if not os.path.isdir(base) and os.path.isdir(os.path.join(root, "images")):
            base = root
        img_dir = os.path.join(base, "images", sub)
        ann_dir = os.path.join(base, "annotations", sub)
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(
                f"ADE20K: expected images in {img_dir}/*.jpg and labels in {ann_dir}/*.png "
                f"(unzip ADEChallengeData2016.zip into {root})"
            )
        images = sorted(glob.glob(os.path.join(img_dir, "*.jpg")))
        if not images:
            raise FileNotFoundError(f"ADE20K: no *.jpg images in {img_dir}")
        files = []
        for img in images:
            ann = os.path.join(ann_dir, os.path.splitext(os.path.basename(img))[0] + ".png")
            if not os.path.isfile(ann):
                raise FileNotFoundError(f"ADE20K: label not found: {ann} (for image {img})")
            files.append((img, ann))
        self.root, self.split = root, split
        super().__init__(
            files,
            150,
            ignore_index=ignore_index,
            class_names=ADE20K_CLASSES,
            transform=transform,
            check_labels=check_labels,
            label_map=reduce_zero_label_lut(ignore_index),
        )


class Cityscapes(SegmentationDataset):
    """Cityscapes (fine annotations), 19 classes.

    Layout: ``root/leftImg8bit/{split}/<city>/<name>_leftImg8bit.png`` with
    ``root/gtFine/{split}/<city>/<name>_gtFine_labelTrainIds.png``; when the trainIds file is
    missing, ``<name>_gtFine_labelIds.png`` is read and converted on the fly (34 ids -> 19 train
    ids, the rest ignore). Split ``test`` has no public labels: its labels are all ignore.
    """

    def __init__(self, root, split="train", transform=None, check_labels=True, ignore_index=255):
        split = _normalise_split(split, ("train", "val", "test"), "Cityscapes")
        root = os.fspath(root)
        img_dir = os.path.join(root, "leftImg8bit", split)
        gt_dir = os.path.join(root, "gtFine", split)
        expected = (
            f"{img_dir}/<city>/*_leftImg8bit.png and "
            f"{gt_dir}/<city>/*_gtFine_labelTrainIds.png (or *_gtFine_labelIds.png)"
        )
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(f"Cityscapes: expected {expected}; {img_dir} does not exist")
        images = sorted(glob.glob(os.path.join(img_dir, "*", "*_leftImg8bit.png")))
        if not images:
            raise FileNotFoundError(f"Cityscapes: no images found; expected {expected}")
        files, convert = [], []
        for img in images:
            city = os.path.basename(os.path.dirname(img))
            stem = os.path.basename(img)[: -len("_leftImg8bit.png")]
            train_ids = os.path.join(gt_dir, city, f"{stem}_gtFine_labelTrainIds.png")
            label_ids = os.path.join(gt_dir, city, f"{stem}_gtFine_labelIds.png")
            if os.path.isfile(train_ids):
                files.append((img, train_ids))
                convert.append(False)
            elif os.path.isfile(label_ids) and split != "test":
                files.append((img, label_ids))
                convert.append(True)
            elif split == "test":
                files.append((img, None))
                convert.append(False)
            else:
                raise FileNotFoundError(
                    f"Cityscapes: label not found: {train_ids} (nor {label_ids}) for image {img}"
                )
        self._convert = convert
        self._lut = id_to_train_id_lut(ignore_index)
        self.root, self.split = root, split
        super().__init__(
            files,
            19,
            ignore_index=ignore_index,
            class_names=CITYSCAPES_CLASSES,
            transform=transform,
            check_labels=check_labels,
        )

    def map_label(self, label, index):
        if self._convert[index]:
            return self._lut[label.clamp(0, self._lut.numel() - 1)]
        return label


class VOC(SegmentationDataset):
    """PASCAL VOC 2012 segmentation, 21 classes (255 = ignore, object borders).

    Layout: ``root/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
    ImageSets/Segmentation/{train,val,trainval}.txt}`` (``root`` may also be the ``VOC2012``
    folder). With the SBD augmented set present (``SegmentationClassAug/<id>.png`` and a
    ``train_aug.txt`` list in ``ImageSets/SegmentationAug/``, ``ImageSets/Segmentation/`` or the
    VOC2012 folder), split ``train_aug`` uses it; ``split="train"`` uses it too when ``aug`` is
    None (auto) and it is present, as PSPNet trains on the 10582 train_aug images. ``aug=False``
    forces the plain 1464-image train set; ``aug=True`` requires SBD.

    Attributes (besides :class:`SegmentationDataset`'s): ``uses_sbd`` (whether this split reads
    the SBD augmented set) and ``list_file`` (the id list read).
    """

    def __init__(
        self, root, split="train", transform=None, check_labels=True, ignore_index=255, aug=None
    ):
        split = _normalise_split(split, ("train", "val", "trainval", "train_aug", "test"), "VOC")
        root = os.fspath(root)
        base = os.path.join(root, "VOCdevkit", "VOC2012")
        if not os.path.isdir(base) and os.path.isdir(os.path.join(root, "JPEGImages")):
            base = root
        img_dir = os.path.join(base, "JPEGImages")
        seg_list_dir = os.path.join(base, "ImageSets", "Segmentation")
        if not os.path.isdir(img_dir) or not os.path.isdir(seg_list_dir):
            raise FileNotFoundError(
                f"VOC: expected {img_dir}/<id>.jpg, {base}/SegmentationClass/<id>.png and "
                f"{seg_list_dir}/{{train,val}}.txt (unpack VOCtrainval_11-May-2012.tar into {root})"
            )
        aug_dir = os.path.join(base, "SegmentationClassAug")
        aug_lists = [
            os.path.join(base, "ImageSets", "SegmentationAug", "train_aug.txt"),
            os.path.join(seg_list_dir, "train_aug.txt"),
            os.path.join(base, "train_aug.txt"),
        ]
        aug_list = next((p for p in aug_lists if os.path.isfile(p)), None)
        sbd = os.path.isdir(aug_dir) and aug_list is not None
        use_aug = split == "train_aug" or (
            split == "train" and (aug is True or (aug is None and sbd))
        )
        if use_aug and not sbd:
            raise FileNotFoundError(
                f"VOC: the SBD augmented set needs {aug_dir}/<id>.png and a train_aug.txt in "
                "one of " + ", ".join(aug_lists)
            )
        if use_aug:
            list_file, lab_dir = aug_list, aug_dir
        else:
            list_file = os.path.join(seg_list_dir, f"{split}.txt")
            lab_dir = os.path.join(base, "SegmentationClass")
            if not os.path.isfile(list_file):
                raise FileNotFoundError(f"VOC: split list not found: {list_file}")
        files, sources = [], []
        for lineno, parts in read_list_file(list_file):
            # an id per line; some train_aug lists hold "/JPEGImages/x.jpg /Seg.../x.png"
            name = os.path.splitext(os.path.basename(parts[0]))[0]
            img = os.path.join(img_dir, name + ".jpg")
            lab = None if split == "test" else os.path.join(lab_dir, name + ".png")
            where = f"{list_file}, line {lineno}"
            check_listed(f"VOC: {where}", img, lab)
            files.append((img, lab))
            sources.append(where)
        self.root, self.split, self.uses_sbd = root, split, use_aug
        self.list_file = list_file
        super().__init__(
            files,
            21,
            ignore_index=ignore_index,
            class_names=VOC_CLASSES,
            transform=transform,
            check_labels=check_labels,
            sources=sources,
        )


def build_dataset(name, root=None, split="train", transform=None, **kwargs):
    """Build a dataset by name.

    ``name``: ``"synthetic"`` (:class:`SyntheticShapes`, no files; ``root`` unused),
    ``"ade20k"``, ``"cityscapes"``, ``"voc"`` (``root`` = the data folder; see each class for the
    expected layout) or ``"list"`` (:class:`ListDataset`: ``list_file=...`` required, ``root`` =
    the folder the listed paths are relative to, ``num_classes=`` (or ``classes=``) required
    unless ``preset=`` names one of :data:`DATASETS`, which also sets the class names and, for
    ``preset="ade20k"``, the reduce-zero-label mapping).
    Extra keyword arguments go to the dataset's constructor.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    key = {"pascalvoc": "voc", "voc2012": "voc", "ade": "ade20k"}.get(key, key)
    if key in _CLASSES:
        _check_options(name, _CLASSES[key], kwargs, _ALIASES.get(key, ()))
    if key == "synthetic":
        split = _normalise_split(split, ("train", "val", "test"), "synthetic")
        if "classes" in kwargs:
            kwargs["num_classes"] = kwargs.pop("classes")
        return SyntheticShapes(split=split, transform=transform, **kwargs)
    if key == "list":
        if "list_file" not in kwargs:
            raise UserError("build_dataset('list', ...) needs list_file=...")
        if "classes" in kwargs:
            kwargs["num_classes"] = kwargs.pop("classes")
        preset = kwargs.pop("preset", None)
        if preset is not None:
            if preset not in DATASETS:
                raise UserError(f"preset must be one of {sorted(DATASETS)}, got {preset!r}")
            p = DATASETS[preset]
            kwargs.setdefault("num_classes", p["classes"])
            kwargs.setdefault("class_names", p["class_names"])
            if preset == "ade20k":
                kwargs.setdefault("label_map", "reduce_zero_label")
        return ListDataset(kwargs.pop("list_file"), root=root, transform=transform, **kwargs)
    if key not in _CLASSES:
        raise UserError(
            f"unknown dataset {name!r}; expected one of 'synthetic', 'ade20k', 'cityscapes', "
            "'voc', 'list'"
        )
    if root is None:
        raise UserError(f"build_dataset({name!r}): root (the data folder) is required")
    return _CLASSES[key](root, split=split, transform=transform, **kwargs)


_CLASSES = {
    "synthetic": SyntheticShapes, "list": ListDataset, "ade20k": ADE20K, "cityscapes": Cityscapes,
    "voc": VOC,
}  # fmt: skip
# options build_dataset takes besides the constructor's arguments
_ALIASES = {"synthetic": ("classes",), "list": ("classes", "preset")}


def _check_options(name: str, cls, kwargs: dict, aliases) -> None:
    """Refuse keyword arguments the dataset does not take, naming the ones it does."""
    params = inspect.signature(cls).parameters
    known = [p for p in params if p not in ("self", "root", "split", "transform")]
    unknown = [k for k in kwargs if k not in known and k not in aliases]
    if unknown:
        raise UserError(
            f"dataset {name!r} takes no option {', '.join(map(repr, unknown))} (--dataset-opt / "
            f"dataset_kwargs); its options: {', '.join([*known, *aliases])}"
        )
