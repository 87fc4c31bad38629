"""Training and validation data as the loop consumes it: the datasets a Config names, the
per-sample seeded augmentation wrapper and the seeded (distributed) training loader."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from ..errors import UserError, user_input
from .datasets import build_dataset
from .faults import BadSample, collate_samples, load_or_mark
from .files import set_max_image_pixels
from .seeding import mix
from .transforms import train_transform

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "AugmentedDataset",
    "build_datasets",
    "build_train_loader",
    "check_batch_fits",
    "init_eval_worker",
    "train_transform_for",
]


class AugmentedDataset(torch.utils.data.Dataset):
    """Applies ``transform(image, label, generator=g)`` with ``g`` seeded from
    ``(seed, epoch, index)``: augmentations independent of workers, ranks and history.

    ``on_error="mark"``: a sample whose file cannot be read comes back as a
    :class:`~pspnet.data.faults.BadSample` (the loaders collate around it and the loop decides to
    stop or skip); ``"raise"`` (default): the error is raised."""

    def __init__(self, dataset, transform, seed: int = 0, on_error: str = "raise"):
        if on_error not in ("raise", "mark"):
            raise ValueError(f"on_error must be 'raise' or 'mark', got {on_error!r}")
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.on_error = on_error

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if self.on_error == "mark":
            item = load_or_mark(self.dataset, index)
            if isinstance(item, BadSample):
                return item
            image, label = item
        else:
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
                    raise UserError("--dataset list needs the training list: --list-file FILE")
                raise UserError(
                    "--dataset list: validation needs its own list, --val-list-file FILE (the "
                    "training list is never used for validation); to train without validating "
                    "pass --no-final-eval --eval-every 0"
                )
            kw["list_file"] = lst
        with user_input(f"dataset {cfg.dataset!r}"):
            out[s] = build_dataset(cfg.dataset, root=cfg.data_root, split=names.get(s, s), **kw)
    return out


def train_transform_for(cfg: Config):
    """The training augmentation ``cfg`` describes (crop, scale, rotate, blur, flip)."""
    with user_input("the config's augmentation"):
        return _train_transform(cfg)


def _train_transform(cfg: Config):
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


def check_batch_fits(n: int, batch_size: int) -> None:
    """Refuse a training set smaller than one batch: with drop_last no step would run."""
    if n < batch_size:
        raise UserError(
            f"the training set has {n} sample(s), fewer than one batch of --batch-size "
            f"{batch_size}: training drops an incomplete batch (drop_last, as the official "
            f"code), so no step would run; lower --batch-size to at most {n} or add data"
        )


class _SkipSampler(torch.utils.data.Sampler):
    """The indices of ``sampler`` without the first ``skip`` (a resumed mid-epoch position)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, int(skip)

    def __iter__(self):
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


def _init_train_worker(_worker_id: int, max_image_pixels: int = 0) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the main process, which finishes the current
    step, saves and then shuts the workers down (a worker killed first would crash the loader);
    and read images up to the run's pixel limit."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    set_max_image_pixels(max_image_pixels)


def init_eval_worker(_worker_id: int, max_image_pixels: int = 0) -> None:
    """An evaluation DataLoader worker reads images up to the run's pixel limit."""
    set_max_image_pixels(max_image_pixels)


def build_train_loader(
    cfg: Config,
    dataset,
    rank: int = 0,
    world: int = 1,
    epoch: int = 0,
    *,
    skip_batches: int = 0,
):
    """DataLoader for one epoch: a seeded (Distributed)Sampler, per-process batch
    ``batch_size // world``, ``drop_last`` as the official training. ``skip_batches``: start
    after that many batches of the epoch (resuming mid-epoch: the same later batches, since every
    sample's augmentation is seeded by its index). Batches are ``(x, y)``, or ``(x, y, bad)``
    when ``dataset`` marks bad samples (:mod:`pspnet.data.faults`)."""
    from torch.utils.data import DataLoader, DistributedSampler

    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by world size {world}")
    per_rank = cfg.batch_size // world
    check_batch_fits(len(dataset), cfg.batch_size)
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    if isinstance(dataset, AugmentedDataset):
        dataset.set_epoch(epoch)
    g = torch.Generator().manual_seed(mix(cfg.seed, epoch, 7))  # worker seeds
    marks = getattr(dataset, "on_error", "raise") == "mark"
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=_SkipSampler(sampler, skip_batches * per_rank) if skip_batches else sampler,
        num_workers=cfg.workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        generator=g,
        persistent_workers=False,
        collate_fn=collate_samples if marks else None,
        worker_init_fn=partial(_init_train_worker, max_image_pixels=cfg.max_image_pixels),
    )
