"""What keeps a training run safe: non-finite losses and gradients, and stop signals.

- :class:`NonFiniteError`: a step whose loss or gradient is not finite is never applied; past
  ``max_bad_steps`` such steps training stops with this error, naming the epoch, the step and
  which loss (or which parameter's gradient). Checkpoints are never written from non-finite
  weights (:func:`first_nonfinite`).
- :class:`StopSignals`: SIGINT / SIGTERM set a flag (a second SIGINT interrupts at once); the
  loop finishes the current step, writes a resumable ``last.pth`` and raises
  :class:`TrainingInterrupted`.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.nn as nn

__all__ = [
    "NonFiniteError",
    "TrainingInterrupted",
    "StopSignals",
    "first_nonfinite",
    "first_nonfinite_grad",
    "grads_finite",
    "buffer_snapshot",
    "restore_buffers",
]


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss or gradient (more often than ``max_bad_steps`` allows),
    or was about to save non-finite weights."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after writing a resumable checkpoint.

    Attributes: ``signum`` (the signal), ``checkpoint`` (the file written, or None)."""

    def __init__(self, message: str, signum: int, checkpoint=None):
        super().__init__(message)
        self.signum = int(signum)
        self.checkpoint = checkpoint


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Context manager: while active, SIGINT and SIGTERM only set :attr:`signum` (the first one
    received); a second SIGINT raises KeyboardInterrupt at once. Outside the main thread nothing
    is installed (signals are then handled as before)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()


def first_nonfinite(model: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer of ``model`` holding NaN or inf."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{kind} {name}"
    return None


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


def grads_finite(model: nn.Module) -> torch.Tensor:
    """A 0-d bool tensor: every gradient of ``model`` is finite (one fused reduction)."""
    grads = _grads(model)
    if not grads:
        return torch.ones((), dtype=torch.bool)
    try:
        norms = torch._foreach_norm(grads)
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch / mixed devices
        norms = [g.norm() for g in grads]
    return torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms]).sum())


def first_nonfinite_grad(model: nn.Module) -> str | None:
    """The name of the first parameter whose gradient holds NaN or inf."""
    for name, p in model.named_parameters():
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


def buffer_snapshot(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the buffers (BatchNorm running statistics and counters), which a forward pass with
    non-finite activations would spoil even when its step is skipped."""
    return [(b, b.detach().clone()) for b in model.buffers()]


def restore_buffers(snapshot) -> None:
    with torch.no_grad():
        for b, saved in snapshot:
            b.copy_(saved)
