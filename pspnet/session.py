"""Setting up a training run: the checked backbone, data, model, optimizer, resume state
(:func:`setup`, the :class:`TrainRun` it returns); the loop itself is :mod:`pspnet.train`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .build import build_model
from .checkpoint import find_resume, load_training_state
from .config import Config
from .data.faults import BadSampleLog
from .data.files import set_max_image_pixels
from .data.loaders import (
    AugmentedDataset,
    build_datasets,
    check_batch_fits,
    train_transform_for,
)
from .data.seeding import mix
from .data.transforms import eval_transform
from .errors import UserError
from .guard import (
    StopSignals,
)
from .optim import PolyLR, build_optimizer
from .run_folder import check_run_folder, prepare_run_folder
from .runtime import (
    init_distributed,
    local_rank,
    resolve_device,
    seed_all,
    wrap_model,
)


def require_backbone(cfg: Config) -> str | None:
    """Refuse to train a real-data run from random initialisation by accident.

    For ``arch="pspnet"`` with ``pretrained`` and no ``backbone_path`` on a dataset other than
    ``synthetic``, the ImageNet backbone file must be found (see
    :func:`pspnet.resnet.find_backbone`); otherwise FileNotFoundError names the places looked
    at, the file to download and ``--no-pretrained``. Returns the file found (or None when no
    file is needed). The model itself (``PSPNet(pretrained=True)``) only warns.
    """
    if cfg.arch != "pspnet" or not cfg.pretrained or cfg.backbone_path:
        return None
    if cfg.dataset == "synthetic":
        return None
    from .resnet import BACKBONE_FILES, find_backbone

    path, looked = find_backbone(cfg.layers)
    if path is not None:
        return path
    name = BACKBONE_FILES[cfg.layers]
    raise FileNotFoundError(
        f"the ImageNet backbone {name} (ResNet-{cfg.layers}, pretrained=True) was not found; "
        f"looked at: {', '.join(looked)}. Download {name} (the ImageNet-pretrained deep-stem "
        "ResNet of hszhao/semseg, linked from its README) into one of those folders or pass "
        "--backbone-path FILE; or pass --no-pretrained to train from random initialisation on "
        "purpose (expect a much lower mIoU)"
    )


@dataclass
class TrainRun:
    """Everything :func:`setup` prepares for the epochs: data, model (``net`` is it wrapped in
    DDP / torch.compile), optimiser, schedule, where to write, and which process this is."""

    cfg: Config
    device: torch.device
    rank: int
    world: int
    say: Callable
    train_set: AugmentedDataset
    val_set: AugmentedDataset | None  # None when the run does not validate
    class_names: list
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: PolyLR
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    start_epoch: int
    plot_failures: set = field(default_factory=set)  # reasons curves.png was not drawn, said once
    bad_steps: int = 0  # steps skipped for a non-finite loss / gradient, whole run
    resume_batches: int = 0  # batches of epoch start_epoch already done (a mid-epoch resume)
    resume_partial: dict | None = None  # that epoch's running sums and counters
    stop: StopSignals | None = None  # SIGINT / SIGTERM received while training
    bad_samples: BadSampleLog | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def out_dir(self) -> Path:
        return self.cfg.out_dir

    @property
    def log_path(self) -> Path:
        return self.cfg.out_dir / "metrics.jsonl"


def _setup_data(cfg: Config):
    """``(cfg with classes set, train set, val set, class names)``."""
    validates = bool(cfg.final_eval or cfg.eval_every)
    ds = build_datasets(cfg, splits=("train", "val") if validates else ("train",))
    classes = int(cfg.classes or ds["train"].num_classes)
    if cfg.classes and getattr(ds["train"], "num_classes", classes) != classes:
        raise UserError(
            f"classes={cfg.classes} but dataset {cfg.dataset!r} has {ds['train'].num_classes}"
        )
    cfg = cfg.replace(classes=classes)
    class_names = list(getattr(ds["train"], "class_names", None) or range(classes))
    class_names = [str(c) for c in class_names]
    check_batch_fits(len(ds["train"]), cfg.batch_size)
    mark = dict(seed=cfg.seed, on_error="mark")  # the loop stops on (or skips) bad samples
    train_set = AugmentedDataset(ds["train"], train_transform_for(cfg), **mark)
    val_set = AugmentedDataset(ds["val"], eval_transform(), **mark) if validates else None
    return cfg, train_set, val_set, class_names


def _resume(cfg, model, optimizer, scheduler, scaler, device, rank, world, max_iter, say):
    """Restore ``cfg.resume`` (if any) into the training objects; returns ``(epochs done,
    the Checkpoint or None)``. A checkpoint written on SIGINT / SIGTERM holds the position in
    its epoch (``batches_done``) and that epoch's running sums (``partial``)."""
    resume = find_resume(cfg)
    if resume is None and cfg.resume == "auto":
        say(f"--resume auto: no {cfg.out_dir / 'last.pth'}, starting from scratch")
    if resume is None:
        return 0, None
    state = load_training_state(resume, model, optimizer, scheduler, scaler, map_location=device)
    start_epoch, batches = state.epoch, state.batches_done
    # the schedule follows the current config (e.g. more epochs than the first run)
    scheduler.max_iter, scheduler.power = max_iter, cfg.power
    where = f", batch {batches} of epoch {start_epoch + 1}" if batches else ""
    say(f"resumed from {resume} at epoch {start_epoch}{where} (iteration {scheduler.last_epoch})")
    if world > 1:  # ranks must not share dropout masks
        torch.manual_seed(mix(cfg.seed, rank, start_epoch, 2, batches))
    return start_epoch, state


def setup(cfg: Config, log=print) -> TrainRun:
    """Device, process group, seeds, data, model, optimiser and schedule, resumed when asked;
    on rank 0 the output directory with ``config.yaml``. The output folder is checked first
    (:func:`pspnet.run_folder.check_run_folder`: one that holds another run is refused)."""
    check_run_folder(cfg)
    set_max_image_pixels(cfg.max_image_pixels)
    device = resolve_device(cfg.device, local_rank())
    rank, world = init_distributed(device)
    say = log if rank == 0 else (lambda *a, **k: None)
    seed_all(cfg.seed, cfg.threads)
    if find_resume(cfg) is None:  # a resumed run has its weights already
        require_backbone(cfg)
    cfg, train_set, val_set, class_names = _setup_data(cfg)
    classes = cfg.classes

    model = build_model(cfg, classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    # different dropout masks per rank (the same initial weights: DDP broadcasts rank 0's)
    torch.manual_seed(mix(cfg.seed, rank, 1))

    steps_per_epoch = len(train_set) // cfg.batch_size
    if cfg.max_iters_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_iters_per_epoch)
    max_iter = cfg.epochs * steps_per_epoch
    optimizer, scheduler = build_optimizer(model, cfg, max_iter)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and device.type == "cuda")
    start_epoch, state = _resume(
        cfg, model, optimizer, scheduler, scaler, device, rank, world, max_iter, say
    )
    run = TrainRun(
        cfg, device, rank, world, say, train_set, val_set, class_names, model,
        wrap_model(model, cfg, device, world), optimizer, scheduler, scaler, steps_per_epoch,
        start_epoch,
    )  # fmt: skip
    if state is not None:
        run.bad_steps = state.bad_steps
        run.resume_batches, run.resume_partial = state.batches_done, state.partial
    run.bad_samples = BadSampleLog(cfg.skip_bad_samples, say)
    if run.main:
        prepare_run_folder(cfg, start_epoch, say)
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"training {type(model).__name__} ({n_params / 1e6:.2f}M params, {classes} classes) on "
        f"{cfg.dataset} ({len(train_set)} images) for {cfg.epochs} epochs x {steps_per_epoch} "
        f"steps, batch {cfg.batch_size} on {world} x {run.device}; output in {run.out_dir}"
    )
    return run


# ------------------------------------------------------------------------------------ epochs
