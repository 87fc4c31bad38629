"""One guarded training step and the run's saves: non-finite losses and gradients never
applied (:class:`~pspnet.guard.NonFiniteError` past ``max_bad_steps``), ``last.pth`` at the end of
an epoch or, for a stopped run, at its position in the epoch; used by the loop in
:mod:`pspnet.train`."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import save_checkpoint
from .guard import (
    NonFiniteError,
    TrainingInterrupted,
    buffer_snapshot,
    first_nonfinite,
    first_nonfinite_grad,
    grads_finite,
    restore_buffers,
    signal_name,
)
from .runtime import (
    autocast_ctx,
    unwrap,
)
from .session import TrainRun

__all__ = ["guarded_step", "stop_flags", "save_last", "save_position", "interruption"]


def _resize_labels(y: torch.Tensor, size) -> torch.Tensor:
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()


def stop_flags(run: TrainRun, empty: bool) -> tuple[int, bool]:
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


def guarded_step(run: TrainRun, x, y, epoch: int, step: int) -> tuple:
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
    return save_last(run, epoch, batches_done, partial)


def save_last(run: TrainRun, epochs_done: int, batches_done: int = 0, partial=None) -> Path:
    """Write ``<out_dir>/last.pth`` after ``epochs_done`` epochs (and ``batches_done`` batches of
    the next, with its running sums ``partial``); refuses non-finite weights."""
    path = run.out_dir / "last.pth"
    bad = first_nonfinite(run.model)
    if bad is not None:
        raise NonFiniteError(
            f"not writing {path}: the model's {bad} holds NaN or inf values; the previous "
            "checkpoint is kept"
        )
    save_checkpoint(
        path,
        run.model,
        run.optimizer,
        run.scheduler,
        run.scaler,
        epochs_done,
        run.cfg,
        class_names=run.class_names,
        bad_steps=run.bad_steps,
        batches_done=batches_done,
        partial=partial,
    )
    return path


def interruption(run: TrainRun, signum: int, where: str, path) -> TrainingInterrupted:
    cmd = "python -m pspnet train ... --resume auto"
    msg = f"stopped by {signal_name(signum)} {where}" + (
        f": wrote the resumable checkpoint {path}; continue with {cmd}" if path else ""
    )
    return TrainingInterrupted(msg, signum, path)  # said once: by whoever catches it
