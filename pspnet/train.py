"""Training PSPNet: SGD + poly schedule (official recipe), torch.compile, AMP, DDP, exact resume.

Entry point: :func:`train` (``python -m pspnet train``). The pieces live in their own modules and
are re-exported here: :func:`~pspnet.build.build_model` (including the small ``tiny`` model for
CPU runs), :func:`~pspnet.optim.param_groups`, :class:`~pspnet.optim.PolyLR`,
:func:`~pspnet.data.loaders.build_train_loader`, :func:`~pspnet.checkpoint.save_checkpoint` /
:func:`~pspnet.checkpoint.load_training_state`, and the runtime helpers of :mod:`pspnet.runtime`.
This module holds the loop only, cut into setup (:func:`setup`), one epoch (:func:`train_epoch`),
validation (:func:`validate_epoch`), saving (:func:`save_epoch`) and the final evaluation.

Reproducibility: the sample order depends only on ``(seed, epoch)`` (a seeded sampler) and every
sample's augmentation draws from its own generator seeded from ``(seed, epoch, index)``, so the data
of an epoch does not depend on what ran before. The remaining randomness (dropout) comes from the
global RNGs, whose states are saved in every checkpoint. A run resumed from ``last.pth`` therefore
continues bit-identically on CPU.

Distributed: launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), each process
trains on its shard of every epoch with ``batch_size / world_size`` images; gradients are averaged
by DistributedDataParallel, BatchNorm is converted to SyncBatchNorm on CUDA, the backend is NCCL on
CUDA and gloo on CPU, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .atomic import append_line_atomic, write_text_atomic
from .build import TinyPSPNet, build_model
from .checkpoint import (
    find_resume,
    load_training_state,
    model_from_checkpoint,
    save_checkpoint,
    saved_config,
)
from .config import Config
from .data.faults import BadSampleLog, unpack
from .data.loaders import (
    AugmentedDataset,
    build_datasets,
    build_train_loader,
    check_batch_fits,
    train_transform_for,
)
from .data.seeding import mix
from .data.transforms import eval_transform
from .evaluate import evaluate
from .guard import (
    NonFiniteError,
    StopSignals,
    TrainingInterrupted,
    buffer_snapshot,
    first_nonfinite,
    first_nonfinite_grad,
    grads_finite,
    restore_buffers,
    signal_name,
)
from .optim import HEAD_MODULES, PolyLR, build_optimizer, param_groups, poly_lr
from .plotting import draw_curves
from .runtime import (
    autocast_ctx,
    init_distributed,
    local_rank,
    resolve_device,
    seed_all,
    unwrap,
    wrap_model,
)

__all__ = [
    "TinyPSPNet",
    "build_model",
    "model_from_checkpoint",
    "param_groups",
    "poly_lr",
    "PolyLR",
    "AugmentedDataset",
    "build_datasets",
    "build_train_loader",
    "save_checkpoint",
    "load_training_state",
    "train",
    "require_backbone",
    "unwrap",
    # the loop's pieces
    "TrainRun",
    "setup",
    "train_epoch",
    "validate_epoch",
    "save_epoch",
    "final_evaluation",
    "train_step",
    "NonFiniteError",
    "TrainingInterrupted",
    # helpers that lived here before, re-exported
    "HEAD_MODULES",
    "autocast_ctx",
    "build_optimizer",
    "init_distributed",
    "resolve_device",
    "saved_config",
]


def _resize_labels(y: torch.Tensor, size) -> torch.Tensor:
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()


def train_step(model, x, y, optimizer, scheduler, scaler, cfg: Config, device) -> tuple:
    """One SGD step; returns detached ``(main_loss, aux_loss)``."""
    out_size = unwrap(model).output_size(x.shape[-2], x.shape[-1])
    y = _resize_labels(y, out_size)
    with autocast_ctx(cfg, device):
        _, main_loss, aux_loss = model(x, y)
        loss = main_loss + cfg.aux_weight * aux_loss
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    scheduler.step()
    return main_loss.detach(), aux_loss.detach()


# ------------------------------------------------------------------------------------ setup


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
        raise ValueError(
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
    checkpoint dict or {})``. A checkpoint written on SIGINT / SIGTERM holds the position in
    its epoch (``batches_done``) and that epoch's running sums (``partial``)."""
    resume = find_resume(cfg)
    if resume is None and cfg.resume == "auto":
        say(f"--resume auto: no {cfg.out_dir / 'last.pth'}, starting from scratch")
    if resume is None:
        return 0, {}
    state = load_training_state(resume, model, optimizer, scheduler, scaler, map_location=device)
    start_epoch = int(state["epoch"])
    batches = int(state.get("batches_done", 0) or 0)
    # the schedule follows the current config (e.g. more epochs than the first run)
    scheduler.max_iter, scheduler.power = max_iter, cfg.power
    where = f", batch {batches} of epoch {start_epoch + 1}" if batches else ""
    say(f"resumed from {resume} at epoch {start_epoch}{where} (iteration {scheduler.last_epoch})")
    if world > 1:  # ranks must not share dropout masks
        torch.manual_seed(mix(cfg.seed, rank, start_epoch, 2, batches))
    return start_epoch, state


def _trim_log(log_path: Path, epochs_done: int) -> None:
    """Keep the rows of the epochs the resumed checkpoint holds (all gone when starting over):
    a row written before a checkpoint that failed to save is dropped."""
    if not log_path.exists():
        return
    if epochs_done == 0:
        log_path.unlink()
        return
    rows = [r for r in log_path.read_text().splitlines() if r.strip()]
    keep = [r for r in rows if json.loads(r).get("epoch", 0) <= epochs_done]
    if keep != rows:
        write_text_atomic(log_path, "".join(r + "\n" for r in keep))


def setup(cfg: Config, log=print) -> TrainRun:
    """Device, process group, seeds, data, model, optimiser and schedule, resumed when asked;
    on rank 0 the output directory with ``config.yaml``."""
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
    run.bad_steps = int(state.get("bad_steps", 0) or 0)
    run.resume_batches = int(state.get("batches_done", 0) or 0)
    run.resume_partial = state.get("partial") if run.resume_batches else None
    run.bad_samples = BadSampleLog(cfg.skip_bad_samples, say)
    if run.main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.out_dir / "config.yaml", cfg.to_yaml())
        _trim_log(run.log_path, start_epoch)
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"training {type(model).__name__} ({n_params / 1e6:.2f}M params, {classes} classes) on "
        f"{cfg.dataset} ({len(train_set)} images) for {cfg.epochs} epochs x {steps_per_epoch} "
        f"steps, batch {cfg.batch_size} on {world} x {run.device}; output in {run.out_dir}"
    )
    return run


# ------------------------------------------------------------------------------------ epochs


def _stop_flags(run: TrainRun, empty: bool) -> tuple[int, bool]:
    """``(signal to stop on or 0, whether to skip this batch)``, agreed by every process."""
    signum = (run.stop.signum or 0) if run.stop is not None else 0
    if run.world == 1:
        return signum, empty
    flags = torch.tensor([signum, int(empty)], dtype=torch.int64, device=run.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return int(flags[0]), bool(flags[1])


def _advance_schedule(run: TrainRun) -> None:
    """Step the LR schedule past a skipped step (quietly: no optimizer step ran, on purpose)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()


def _bad_step(run: TrainRun, epoch: int, step: int, what: str, snapshot) -> None:
    """Count a skipped step; past ``max_bad_steps`` raise :class:`NonFiniteError`."""
    run.bad_steps += 1
    cfg = run.cfg
    where = (
        f"epoch {epoch + 1}, step {step + 1} of {run.steps_per_epoch} "
        f"(iteration {run.scheduler.last_epoch + 1})"
    )
    if run.bad_steps > cfg.max_bad_steps:
        allowed = f" (--max-bad-steps {cfg.max_bad_steps} reached)" if cfg.max_bad_steps else ""
        raise NonFiniteError(
            f"non-finite {what} at {where}{allowed}: training stopped; this step was not applied "
            f"and {run.out_dir / 'last.pth'} still holds the last good checkpoint (or was never "
            "written). Lower --base-lr, check the data, or pass --max-bad-steps N to skip up to "
            "N such steps"
        )
    if snapshot is not None:
        restore_buffers(snapshot)  # BatchNorm statistics of the skipped forward pass
    run.say(
        f"skipping the step at {where}: non-finite {what} "
        f"({run.bad_steps} of at most {cfg.max_bad_steps} skipped)"
    )


def _guarded_step(run: TrainRun, x, y, epoch: int, step: int) -> tuple:
    """One SGD step that is applied only when its losses and gradients are finite; returns
    detached ``(main_loss, aux_loss, status)``, status ``"ok"``, ``"bad"`` (skipped, counted in
    ``run.bad_steps``) or ``"amp_skip"`` (the fp16 GradScaler skipped an overflow: normal)."""
    cfg, model, optimizer, scaler = run.cfg, run.net, run.optimizer, run.scaler
    out_size = unwrap(model).output_size(x.shape[-2], x.shape[-1])
    y = _resize_labels(y, out_size)
    snapshot = buffer_snapshot(run.model) if cfg.max_bad_steps else None
    with autocast_ctx(cfg, run.device):
        _, main_loss, aux_loss = model(x, y)
        loss = main_loss + cfg.aux_weight * aux_loss
    optimizer.zero_grad(set_to_none=True)
    amp = scaler is not None and scaler.is_enabled()
    # backward always runs (DDP expects it on every rank); the step is applied or not
    (scaler.scale(loss) if amp else loss).backward()
    main_loss, aux_loss = main_loss.detach(), aux_loss.detach()
    bad = torch.stack([~torch.isfinite(main_loss), ~torch.isfinite(aux_loss)]).to(torch.int64)
    if not amp:
        bad = torch.cat([bad, (~grads_finite(run.model)).to(bad.device, torch.int64)[None]])
    if run.world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    bad_main, bad_aux, *bad_grad = (bool(b) for b in bad.tolist())
    if bad_main or bad_aux:
        which = " and ".join(n for n, b in (("main_loss", bad_main), ("aux_loss", bad_aux)) if b)
        values = f"main_loss={float(main_loss):.4g}, aux_loss={float(aux_loss):.4g}"
        optimizer.zero_grad(set_to_none=True)
        if amp:  # keep the scaler's schedule: an update after every step
            scaler.update()
        _bad_step(run, epoch, step, f"{which} ({values})", snapshot)
        _advance_schedule(run)
        return main_loss, aux_loss, "bad"
    if bad_grad and bad_grad[0]:
        name = first_nonfinite_grad(run.model) or "a parameter"
        optimizer.zero_grad(set_to_none=True)
        _bad_step(run, epoch, step, f"gradient of {name} (finite losses)", snapshot)
        _advance_schedule(run)
        return main_loss, aux_loss, "bad"
    status = "ok"
    if amp:
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skipped by the scaler when a gradient overflowed
        scaler.update()
        if scaler.get_scale() < scale:
            status = "amp_skip"
    else:
        optimizer.step()
    if status == "amp_skip":
        _advance_schedule(run)
    else:
        run.scheduler.step()
    return main_loss, aux_loss, status


def save_position(run: TrainRun, epoch: int, batches_done: int, partial: dict) -> Path | None:
    """Rank 0: write the resumable ``last.pth`` of a run stopped after ``batches_done`` batches
    of epoch ``epoch`` (0-based), with the epoch's running sums; returns the file."""
    if not run.main:
        return None
    path = run.out_dir / "last.pth"
    _save(run, path, epoch, batches_done, partial)
    return path


def _save(run: TrainRun, path: Path, epochs_done: int, batches_done: int = 0, partial=None):
    bad = first_nonfinite(run.model)
    if bad is not None:
        raise NonFiniteError(
            f"not writing {path}: the model's {bad} holds NaN or inf values; the previous "
            "checkpoint is kept"
        )
    extra = {"class_names": run.class_names, "bad_steps": run.bad_steps}
    if batches_done:
        extra.update(batches_done=int(batches_done), partial=partial)
    save_checkpoint(
        path,
        run.model,
        run.optimizer,
        run.scheduler,
        run.scaler,
        epochs_done,
        run.cfg,
        extra=extra,
    )


def _interrupted(run: TrainRun, signum: int, where: str, path) -> TrainingInterrupted:
    cmd = "python -m pspnet train ... --resume auto"
    msg = f"stopped by {signal_name(signum)} {where}: " + (
        f"wrote the resumable checkpoint {path}; continue with {cmd}" if path else ""
    )
    run.say(msg)
    return TrainingInterrupted(msg, signum, path)


def _reduce_epoch(run: TrainRun, sums, counts: dict):
    """Sums and skipped-sample counts over the processes (the step counts agree already)."""
    if run.world == 1:
        return sums, counts
    dist.all_reduce(sums)
    n = torch.tensor([counts["skipped_samples"]], dtype=torch.int64, device=run.device)
    dist.all_reduce(n)
    return sums, dict(counts, skipped_samples=int(n))


def train_epoch(run: TrainRun, epoch: int) -> dict:
    """Train one epoch; returns its log row (epoch, iteration, mean losses, lr, time, img/s,
    skipped steps and samples). Resumes mid-epoch where ``run`` says so; on SIGINT / SIGTERM
    writes the position and raises :class:`TrainingInterrupted`."""
    from tqdm import tqdm

    cfg, device, world = run.cfg, run.device, run.world
    optimizer, steps = run.optimizer, run.steps_per_epoch
    run.net.train()
    skip = run.resume_batches if epoch == run.start_epoch else 0
    partial = (run.resume_partial or {}) if skip else {}
    run.resume_batches, run.resume_partial = 0, None
    if skip:
        loader = build_train_loader(cfg, run.train_set, run.rank, world, epoch, skip_batches=skip)
    else:
        loader = build_train_loader(cfg, run.train_set, run.rank, world, epoch)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # main, aux, count
    if run.main and "sums" in partial:  # rank 0 carries the whole run's partial sums
        sums += partial["sums"].to(device, torch.float64)
    counts = {k: int(partial.get(k, 0)) for k in ("bad_steps", "amp_skipped_steps")}
    # samples are per process: rank 0 carries the whole run's partial count
    counts["skipped_samples"] = int(partial.get("skipped_samples", 0)) if run.main else 0
    images = int(partial.get("images", 0)) if run.main else 0
    t0 = time.perf_counter() - float(partial.get("time", 0.0))
    t_last, n_last = time.perf_counter(), 0
    show = run.main and cfg.progress
    bar = tqdm(
        total=steps,
        initial=min(skip, steps),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not show,
        dynamic_ncols=True,
        leave=True,
    )
    last_lr = optimizer.param_groups[0]["lr"]
    for i, batch in enumerate(loader, start=skip):
        if i >= steps:
            break
        x, y, bad = unpack(batch)
        counts["skipped_samples"] += run.bad_samples.handle(bad) if bad else 0
        signum, empty = _stop_flags(run, x is None)
        if signum:
            bar.close()
            sums, counts = _reduce_epoch(run, sums, counts)
            keep = dict(counts, sums=sums.cpu(), images=images, time=time.perf_counter() - t0)
            path = save_position(run, epoch, i, keep)
            where = f"at epoch {epoch + 1}, after step {i} of {steps}"
            raise _interrupted(run, signum, where, path)
        if empty:  # every sample of this batch was bad and skipped
            bar.update(1)
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = last_lr = optimizer.param_groups[0]["lr"]
        main_loss, aux_loss, status = _guarded_step(run, x, y, epoch, i)
        if status == "bad":
            counts["bad_steps"] += 1
        else:
            counts["amp_skipped_steps"] += status == "amp_skip"
            sums += torch.stack(
                [main_loss.double(), aux_loss.double(), torch.ones((), device=device).double()]
            )
        images += x.shape[0] * world
        n_last += x.shape[0] * world
        if show and (i % 5 == 4 or i == steps - 1):
            now = time.perf_counter()
            bar.set_postfix(
                loss=f"{float(main_loss):.4f}",
                lr=f"{lr:.2e}",
                img_s=f"{n_last / max(now - t_last, 1e-9):.1f}",
            )
            t_last, n_last = now, 0
        bar.update(1)
    bar.close()
    sums, counts = _reduce_epoch(run, sums, counts)
    elapsed = time.perf_counter() - t0
    n = float(sums[2])
    return {
        "epoch": epoch + 1,
        "iteration": int(run.scheduler.last_epoch),
        "loss": float(sums[0] / sums[2]) if n else float("nan"),
        "aux_loss": float(sums[1] / sums[2]) if n else float("nan"),
        "lr": last_lr,
        "time": round(elapsed, 3),
        "img_per_s": round(images / max(elapsed, 1e-9), 2),
        **counts,
    }


def _evaluate(run: TrainRun) -> dict:
    return evaluate(
        run.model,
        run.val_set,
        run.cfg,
        device=run.device,
        rank=run.rank,
        world=run.world,
        log=run.say,
    )


def validate_epoch(run: TrainRun, epoch: int, row: dict) -> dict | None:
    """Validation metrics after ``epoch`` when ``cfg.eval_every`` asks for them (and after the
    last epoch), added to ``row``; ``None`` when this epoch is not evaluated."""
    cfg = run.cfg
    last = epoch + 1 == cfg.epochs
    if not (cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or last)):
        return None
    metrics = _evaluate(run)
    row.update(
        val_mIoU=metrics["mIoU"],
        val_mAcc=metrics["mAcc"],
        val_allAcc=metrics["allAcc"],
        val_mIoU_present=metrics.get("mIoU_present", metrics["mIoU"]),
    )
    if metrics.get("skipped_samples"):
        row["val_skipped_samples"] = metrics["skipped_samples"]
    return metrics


def _log_row(run: TrainRun, row: dict) -> None:
    notes = [
        f"{row[k]} {label}"
        for k, label in (
            ("bad_steps", "non-finite step(s) skipped"),
            ("amp_skipped_steps", "fp16 overflow step(s) skipped by the GradScaler"),
            ("skipped_samples", "bad sample(s) skipped"),
            ("val_skipped_samples", "bad validation sample(s) skipped"),
        )
        if row.get(k)
    ]
    run.say(
        f"epoch {row['epoch']}: loss {row['loss']:.4f} aux {row['aux_loss']:.4f} "
        f"lr {row['lr']:.2e} {row['time']:.1f}s {row['img_per_s']:.1f} img/s"
        + (
            f" val mIoU {row['val_mIoU']:.4f} allAcc {row['val_allAcc']:.4f}"
            if "val_mIoU" in row
            else ""
        )
        + (f"; {', '.join(notes)}" if notes else "")
    )


def save_epoch(run: TrainRun, epoch: int, row: dict) -> None:
    """Rank 0: append ``row`` to ``metrics.jsonl``, write ``last.pth`` every ``save_freq``
    epochs and at the end, redraw ``curves.png``."""
    if not run.main:
        return
    cfg = run.cfg
    append_line_atomic(run.log_path, json.dumps(row))
    if (epoch + 1) % cfg.save_freq == 0 or epoch + 1 == cfg.epochs:
        _save(run, run.out_dir / "last.pth", epoch + 1)
    if cfg.plot:
        why = draw_curves(run.log_path, run.out_dir / "curves.png")
        if why is not None and why not in run.plot_failures:  # once per reason and run
            run.plot_failures.add(why)
            run.say(f"curves.png not drawn: {why}")


def final_evaluation(run: TrainRun, history: list[dict], metrics: dict | None) -> dict:
    """The validation metrics of the trained model (evaluated again unless the last epoch
    was), printed as a table and written to ``eval.json`` on rank 0."""
    from .metrics import format_table

    cfg = run.cfg
    if metrics is None or not history or "val_mIoU" not in history[-1]:
        metrics = _evaluate(run)
    metrics["class_names"] = run.class_names
    run.say(f"evaluation on {cfg.dataset}/{cfg.val_split} ({len(run.val_set)} images):")
    run.say(format_table(metrics))
    if run.main:
        write_text_atomic(run.out_dir / "eval.json", json.dumps(metrics, indent=1))
    return metrics


def train(cfg: Config, log=print) -> dict:
    """Train as described by ``cfg``; returns ``{'model', 'history', 'metrics', 'out_dir'}``.

    Writes ``last.pth`` (every ``save_freq`` epochs and at the end), ``metrics.jsonl`` (one JSON
    object per epoch) and ``curves.png`` to ``cfg.out_dir`` on rank 0, each atomically.

    Faults: a non-finite loss or gradient is never applied; past ``cfg.max_bad_steps`` of them
    :class:`~pspnet.guard.NonFiniteError` names the epoch, step and loss (no checkpoint is
    written from non-finite weights). SIGINT / SIGTERM finish the current step, write a
    resumable ``last.pth`` (with the position in the epoch) and raise
    :class:`~pspnet.guard.TrainingInterrupted`; ``resume="auto"`` then continues exactly as an
    uninterrupted run. A bad sample stops the run naming its file and index, or is skipped
    (``skip_bad_samples``) and counted in the epoch's row.
    """
    run = setup(cfg, log)
    history: list[dict] = []
    metrics = None
    with StopSignals() as run.stop:
        for epoch in range(run.start_epoch, run.cfg.epochs):
            row = train_epoch(run, epoch)
            evaluated = validate_epoch(run, epoch, row)
            if evaluated is not None:
                metrics = evaluated
            history.append(row)
            _log_row(run, row)
            save_epoch(run, epoch, row)
            signum, _ = _stop_flags(run, False)
            if signum:  # received during the epoch's last step, validation or saving
                last = epoch + 1 == run.cfg.epochs
                if run.main and not (last or (epoch + 1) % run.cfg.save_freq == 0):
                    _save(run, run.out_dir / "last.pth", epoch + 1)
                path = run.out_dir / "last.pth" if run.main else None
                where = f"after epoch {epoch + 1}" + (
                    " (the last; the final evaluation was skipped)" if last else ""
                )
                raise _interrupted(run, signum, where, path)
    run.stop = None
    if run.cfg.final_eval:
        metrics = final_evaluation(run, history, metrics)
    if run.world > 1:
        dist.barrier()
    return {
        "model": run.model,
        "history": history,
        "metrics": metrics,
        "out_dir": run.out_dir,
        "config": run.cfg,
    }
