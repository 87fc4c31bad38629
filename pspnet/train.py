"""Training PSPNet: SGD + poly schedule (official recipe), torch.compile, AMP, DDP, exact resume.

Entry point: :func:`train` (``python -m pspnet train``). This module holds the loop: one epoch
(:func:`train_epoch`), validation (:func:`validate_epoch`), saving (:func:`save_epoch`) and the
final evaluation (:func:`final_evaluation`). The run is set up by :func:`pspnet.session.setup`
(data, model, optimiser, resume); one guarded step and the checkpoint saves are in
:mod:`pspnet.steps`; the model is built by :func:`pspnet.build.build_model`, the optimiser and
schedule by :mod:`pspnet.optim`, the loaders by :mod:`pspnet.data.loaders`.

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
import os
import time

import torch
import torch.distributed as dist

from . import steps
from .atomic import append_line_atomic, write_text_atomic
from .config import Config
from .data.faults import unpack
from .data.loaders import build_train_loader
from .evaluate import evaluate
from .guard import StopSignals
from .plotting import draw_curves
from .run_folder import hold_run_folder
from .runtime import preserved_rng
from .session import TrainRun, setup

__all__ = ["train", "train_epoch", "validate_epoch", "save_epoch", "final_evaluation"]


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
    optimizer, n_steps = run.optimizer, run.steps_per_epoch
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
        total=n_steps,
        initial=min(skip, n_steps),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not show,
        dynamic_ncols=True,
        leave=True,
    )
    last_lr = optimizer.param_groups[0]["lr"]
    for i, batch in enumerate(loader, start=skip):
        if i >= n_steps:
            break
        x, y, bad = unpack(batch)
        counts["skipped_samples"] += run.bad_samples.handle(bad) if bad else 0
        signum, empty = steps.stop_flags(run, x is None)
        if signum:
            bar.close()
            sums, counts = _reduce_epoch(run, sums, counts)
            keep = dict(counts, sums=sums.cpu(), images=images, time=time.perf_counter() - t0)
            path = steps.save_position(run, epoch, i, keep)
            where = f"at epoch {epoch + 1}, after step {i} of {n_steps}"
            raise steps.interruption(run, signum, where, path)
        if empty:  # every sample of this batch was bad and skipped
            bar.update(1)
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = last_lr = optimizer.param_groups[0]["lr"]
        main_loss, aux_loss, status = steps.guarded_step(run, x, y, epoch, i)
        if status == "bad":
            counts["bad_steps"] += 1
        else:
            counts["amp_skipped_steps"] += status == "amp_skip"
            sums += torch.stack(
                [main_loss.double(), aux_loss.double(), torch.ones((), device=device).double()]
            )
        images += x.shape[0] * world
        n_last += x.shape[0] * world
        if show and (i % 5 == 4 or i == n_steps - 1):
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
    """Validation metrics of the model now; the global RNGs are left as they were, so that
    validating does not change what is trained next (dropout masks)."""
    with preserved_rng():
        return _metrics(run)


def _metrics(run: TrainRun) -> dict:
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
        steps.save_last(run, epoch + 1)
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

    Rank 0 holds the output folder's lock (:func:`pspnet.run_folder.hold_run_folder`) for the
    whole run: a second training in the same folder is refused before it touches any file there.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(cfg, log)
    with hold_run_folder(cfg):
        return _train(cfg, log)


def _train(cfg: Config, log) -> dict:
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
            signum, _ = steps.stop_flags(run, False)
            if signum:  # received during the epoch's last step, validation or saving
                last = epoch + 1 == run.cfg.epochs
                if run.main and not (last or (epoch + 1) % run.cfg.save_freq == 0):
                    steps.save_last(run, epoch + 1)
                path = run.out_dir / "last.pth" if run.main else None
                where = f"after epoch {epoch + 1}" + (
                    " (the last; the final evaluation was skipped)" if last else ""
                )
                raise steps.interruption(run, signum, where, path)
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
