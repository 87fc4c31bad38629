"""Training and validation data as the loop consumes it: the datasets a Config names, the
per-sample seeded augmentation wrapper and the seeded (distributed) training loader."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .datasets import build_dataset
from .seeding import mix
from .transforms import train_transform

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["AugmentedDataset", "build_datasets", "build_train_loader", "train_transform_for"]


class AugmentedDataset(torch.utils.data.Dataset):
    """Applies ``transform(image, label, generator=g)`` with ``g`` seeded from
    ``(seed, epoch, index)``: augmentations independent of workers, ranks and history."""

    def __init__(self, dataset, transform, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        if self.transform is None:
            return image, label
        g = torch.Generator().manual_seed(mix(self.seed, self.epoch, index))
        return self.transform(image, label, generator=g)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _dataset_kwargs(cfg: Config) -> dict:
    kw = dict(cfg.dataset_kwargs)
    if cfg.dataset == "synthetic" and cfg.classes and "num_classes" not in kw:
        kw["num_classes"] = cfg.classes
    return kw


def _list_files(cfg: Config, kw: dict) -> dict:
    """The ``list`` dataset's file per split: ``list_file`` (train) and ``val_list_file`` (val),
    from the config fields or ``dataset_kwargs`` (both keys removed from ``kw``)."""
    train = cfg.list_file or kw.pop("list_file", None)
    val = cfg.val_list_file or kw.pop("val_list_file", None)
    kw.pop("list_file", None)
    kw.pop("val_list_file", None)
    return {"train": train, "val": val}


def build_datasets(cfg: Config, splits=("train", "val")):
    """``{split: dataset}`` (un-augmented) from ``pspnet.data.build_dataset``.

    ``dataset="list"`` reads the training list ``list_file`` and the validation list
    ``val_list_file``: asking for ``val`` without a validation list is an error (the training
    list is never used for validation)."""
    out = {}
    names = {"train": cfg.train_split, "val": cfg.val_split}
    for s in splits:
        kw = _dataset_kwargs(cfg)
        if cfg.dataset == "list":
            lists = _list_files(cfg, kw)
            lst = lists.get(s, lists["val"])
            if not lst:
                if s == "train":
                    raise ValueError("--dataset list needs the training list: --list-file FILE")
                raise ValueError(
                    "--dataset list: validation needs its own list, --val-list-file FILE (the "
                    "training list is never used for validation); to train without validating "
                    "pass --no-final-eval --eval-every 0"
                )
            kw["list_file"] = lst
        out[s] = build_dataset(cfg.dataset, root=cfg.data_root, split=names.get(s, s), **kw)
    return out


def train_transform_for(cfg: Config):
    """The training augmentation ``cfg`` describes (crop, scale, rotate, blur, flip)."""
    return train_transform(
        cfg.crop_size,
        scale=(cfg.scale_min, cfg.scale_max) if (cfg.scale_min, cfg.scale_max) != (1, 1) else None,
        rotate=(cfg.rotate_min, cfg.rotate_max)
        if (cfg.rotate_min, cfg.rotate_max) != (0, 0)
        else None,
        blur=cfg.blur,
        flip=cfg.flip,
        ignore_index=cfg.ignore_index,
    )


def build_train_loader(cfg: Config, dataset, rank: int = 0, world: int = 1, epoch: int = 0):
    """DataLoader for one epoch: a seeded (Distributed)Sampler, per-process batch
    ``batch_size // world``, ``drop_last`` as the official training."""
    from torch.utils.data import DataLoader, DistributedSampler

    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world size {world}")
    per_rank = cfg.batch_size // world
    if len(dataset) < cfg.batch_size:
        raise ValueError(
            f"the training set has {len(dataset)} samples, fewer than batch_size {cfg.batch_size}"
        )
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    if isinstance(dataset, AugmentedDataset):
        dataset.set_epoch(epoch)
    g = torch.Generator().manual_seed(mix(cfg.seed, epoch, 7))  # worker seeds
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        generator=g,
        persistent_workers=False,
    )
