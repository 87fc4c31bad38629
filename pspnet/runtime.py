"""Where and how the code runs: the device, the process group, autocast, and the plain module
inside torch.compile / DDP / DataParallel wrappers.

Used by training, evaluation, prediction and checkpointing alike; imports nothing of the training
loop.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import UserError

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "unwrap",
    "resolve_device",
    "init_distributed",
    "local_rank",
    "autocast_ctx",
    "seed_all",
    "rng_state",
    "set_rng_state",
    "preserved_rng",
    "wrap_model",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile / DDP / DataParallel wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def local_rank() -> int:
    """This process's ``LOCAL_RANK`` (set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    if spec == "auto":
        spec = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "meta":
        raise UserError(f"device {spec!r} holds no data: use auto, cpu, cuda or cuda:N")
    if dev.type not in ("cpu", "cuda"):
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        try:
            ok = bool(available()) if callable(available) else False
        except Exception:  # a backend that cannot even tell: not usable here
            ok = False
        if not ok:
            raise UserError(f"device {spec!r} requested but {dev.type} is not available")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world


def autocast_ctx(cfg: Config, device: torch.device):
    """Autocast to bf16/fp16 on CUDA when ``cfg.amp`` asks for it; nothing otherwise."""
    if cfg.amp == "none" or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def seed_all(seed: int, threads: int = 0) -> None:
    """Seed Python's, NumPy's and torch's global RNGs; set torch's CPU threads (0: its default)."""
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The states of the global RNGs (torch CPU and CUDA, NumPy's legacy one, Python's), as
    tensors and plain containers (``torch.load(weights_only=True)`` reads them)."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what we save
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s states."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block without changing the global RNGs: what it draws is not drawn from the
    stream of the code around it (e.g. validation inside a training run)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def wrap_model(model: nn.Module, cfg: Config, device: torch.device, world: int) -> nn.Module:
    """``model`` in SyncBatchNorm + DDP (several processes) and torch.compile (``cfg.compile``)."""
    net = model
    if world > 1:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net, backend=cfg.compile_backend)
    return net
