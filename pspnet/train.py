"""Training PSPNet: SGD + poly schedule (official recipe), torch.compile, AMP, DDP, exact resume.

Entry point: :func:`train` (``python -m pspnet train``). Pieces usable on their own:
:func:`build_model` (including the small ``tiny`` model for CPU runs), :func:`param_groups`,
:class:`PolyLR`, :func:`build_train_loader`, :func:`save_checkpoint` / :func:`load_training_state`.

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

import inspect
import json
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .model import PSPNet

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
]

HEAD_MODULES = ("ppm", "cls", "aux")


# ------------------------------------------------------------------------------------- model


def _tiny_modules(width: int, bins, classes: int, dropout: float, use_ppm: bool):
    from .model import _head
    from .ppm import PPM
    from .resnet import Bottleneck, conv3x3

    w = int(width)
    if w < 1:
        raise ValueError(f"tiny_width must be >= 1, got {width}")
    layer0 = nn.Sequential(
        conv3x3(3, w, stride=2),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        conv3x3(w, w),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        conv3x3(w, 2 * w),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    inplanes = 2 * w
    stages = []
    # (planes, stride, dilation): output stride 8 as PSPNet (layer3/layer4 dilated 2/4)
    for planes, stride, dilation in ((w, 1, 1), (2 * w, 2, 1), (4 * w, 1, 2), (8 * w, 1, 4)):
        out = planes * Bottleneck.expansion
        down = None
        if stride != 1 or inplanes != out:
            down = nn.Sequential(
                nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        stages.append(nn.Sequential(Bottleneck(inplanes, planes, stride, down, dilation)))
        inplanes = out
    fea_dim = inplanes  # 32 * w
    if fea_dim % len(bins):
        raise ValueError(f"32 * tiny_width must be divisible by len(bins) = {len(bins)}")
    ppm = PPM(fea_dim, fea_dim // len(bins), bins) if use_ppm else None
    cls = _head(fea_dim * (2 if use_ppm else 1), 4 * w, classes, dropout)
    aux = _head(16 * w, 4 * w, classes, dropout)
    for m in [layer0, *stages]:
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return layer0, stages, ppm, cls, aux


def _default_head() -> str:
    """PSPNet's default ``head`` (the official concat, or the concat-free fused head)."""
    p = inspect.signature(PSPNet.__init__).parameters.get("head")
    return p.default if p is not None else "concat"


def _model_heads() -> tuple:
    from . import model

    return tuple(getattr(model, "_HEADS", ("concat",)))


class TinyPSPNet(PSPNet):
    """A narrow PSPNet for CPU runs and tests: the same modules (``layer0..layer4``, ``ppm``,
    ``cls``, ``aux``), forward and losses as :class:`pspnet.PSPNet`, with a one-block-per-stage
    bottleneck ResNet of base width ``width`` (features ``32 * width`` instead of 2048)."""

    def __init__(
        self,
        classes: int = 2,
        width: int = 16,
        bins=(1, 2, 3, 6),
        dropout: float = 0.1,
        zoom_factor: int = 8,
        use_ppm: bool = True,
        criterion: nn.Module | None = None,
        aux_weight: float = 0.4,
        head: str | None = None,
    ):
        nn.Module.__init__(self)
        if head is None:
            head = _default_head()
        if classes < 2:
            raise ValueError(f"classes must be an int > 1, got {classes!r}")
        if zoom_factor not in (1, 2, 4, 8):
            raise ValueError(f"zoom_factor must be 1, 2, 4 or 8, got {zoom_factor!r}")
        self.layers = "tiny"
        self.bins = tuple(int(b) for b in bins)
        self.zoom_factor = zoom_factor
        self.use_ppm = bool(use_ppm)
        self.criterion = (
            criterion if criterion is not None else nn.CrossEntropyLoss(ignore_index=255)
        )
        self.aux_weight = float(aux_weight)
        if head not in _model_heads():
            raise ValueError(f"head must be one of {_model_heads()}, got {head!r}")
        self.head = head
        layer0, stages, ppm, cls, aux = _tiny_modules(
            width, self.bins, classes, dropout, self.use_ppm
        )
        self.layer0 = layer0
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        if ppm is not None:
            self.ppm = ppm
        self.cls, self.aux = cls, aux


def build_model(cfg: Config, classes: int | None = None) -> nn.Module:
    """The model described by ``cfg`` (``arch``: ``pspnet`` = :class:`pspnet.PSPNet`, ``tiny`` =
    :class:`TinyPSPNet`), with ``CrossEntropyLoss(ignore_index=cfg.ignore_index)``."""
    classes = int(classes or cfg.classes)
    if classes < 2:
        raise ValueError(f"classes must be >= 2 (set --classes), got {classes}")
    criterion = nn.CrossEntropyLoss(ignore_index=cfg.ignore_index)
    if cfg.arch == "tiny":
        return TinyPSPNet(
            classes=classes,
            width=cfg.tiny_width,
            bins=cfg.bins,
            dropout=cfg.dropout,
            zoom_factor=cfg.zoom_factor,
            use_ppm=cfg.use_ppm,
            criterion=criterion,
            aux_weight=cfg.aux_weight,
            head=cfg.head or None,
        )
    extra = {"head": cfg.head} if cfg.head else {}
    return PSPNet(
        layers=cfg.layers,
        bins=cfg.bins,
        dropout=cfg.dropout,
        classes=classes,
        zoom_factor=cfg.zoom_factor,
        use_ppm=cfg.use_ppm,
        criterion=criterion,
        pretrained=cfg.pretrained,
        aux_weight=cfg.aux_weight,
        backbone_path=cfg.backbone_path,
        **extra,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile / DDP / DataParallel wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


# ---------------------------------------------------------------------------- optimisation


def param_groups(model: nn.Module, base_lr: float, head_lr_mult: float = 10.0) -> list[dict]:
    """The official parameter groups: backbone (``layer0..layer4``) at ``base_lr``, the new
    layers (``ppm``, ``cls``, ``aux``) at ``head_lr_mult * base_lr``.

    Each group carries ``lr_mult`` (1 or ``head_lr_mult``) and ``name``.
    """
    model = unwrap(model)
    backbone, head = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (head if name.split(".", 1)[0] in HEAD_MODULES else backbone).append(p)
    groups = [
        dict(params=backbone, lr=base_lr, lr_mult=1.0, name="backbone"),
        dict(params=head, lr=base_lr * head_lr_mult, lr_mult=head_lr_mult, name="head"),
    ]
    return [g for g in groups if g["params"]]


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = 0.9) -> float:
    """``base_lr * (1 - iteration / max_iter) ** power`` (the official poly schedule)."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be > 0, got {max_iter}")
    frac = min(max(iteration, 0), max_iter) / max_iter
    return base_lr * (1.0 - frac) ** power


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Poly learning rate, per iteration: group ``g`` gets ``poly_lr(initial_lr_g, it, max_iter)``.

    Step ``i`` (0-based) of training uses ``poly_lr(base, i, max_iter)``, as the official code
    (which sets the LR for the next step after each step, starting from ``base_lr``).
    """

    def __init__(self, optimizer, max_iter: int, power: float = 0.9, last_epoch: int = -1):
        if max_iter <= 0:
            raise ValueError(f"max_iter must be > 0, got {max_iter}")
        self.max_iter = int(max_iter)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [poly_lr(b, self.last_epoch, self.max_iter, self.power) for b in self.base_lrs]

    def _get_closed_form_lr(self):
        return self.get_lr()


# ------------------------------------------------------------------------------------ data

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from a tuple of ints (splitmix64 rounds)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (int(v) & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


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
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, index))
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
    from the config fields or ``dataset_kwargs``."""
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
    from . import data

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
        out[s] = data.build_dataset(cfg.dataset, root=cfg.data_root, split=names.get(s, s), **kw)
    return out


def _train_transform(cfg: Config):
    from . import data

    return data.train_transform(
        cfg.crop_size,
        scale=(cfg.scale_min, cfg.scale_max) if (cfg.scale_min, cfg.scale_max) != (1, 1) else None,
        rotate=(cfg.rotate_min, cfg.rotate_max)
        if (cfg.rotate_min, cfg.rotate_max) != (0, 0)
        else None,
        blur=cfg.blur,
        flip=cfg.flip,
        ignore_index=cfg.ignore_index,
    )


def _eval_transform():
    from . import data

    return data.eval_transform()


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
    g = torch.Generator().manual_seed(_mix(cfg.seed, epoch, 7))  # worker seeds
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


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what we save
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(
    path,
    model,
    optimizer=None,
    scheduler=None,
    scaler=None,
    epoch=0,
    cfg: Config | None = None,
    extra: dict | None = None,
) -> None:
    """Write ``{'model', 'optimizer', 'scheduler', 'scaler', 'epoch', 'iteration', 'rng',
    'config', ...}`` atomically (``torch.load(weights_only=True)`` can read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "epoch": int(epoch),
        "iteration": int(scheduler.last_epoch) if scheduler is not None else 0,
        "rng": _rng_state(),
        "config": cfg.to_dict() if cfg is not None else None,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    state.update(extra or {})
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(
    path, model, optimizer=None, scheduler=None, scaler=None, map_location="cpu"
) -> dict:
    """Restore a :func:`save_checkpoint` file; returns the checkpoint dict (``epoch`` = epochs
    done). Restores the RNG states too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    from .checkpoint import load_file

    state = load_file(path, map_location=map_location)  # clear errors for bad files
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"{path} is not a training checkpoint of pspnet (no model/epoch entries)")
    from .checkpoint import apply_state_dict

    apply_state_dict(model, state["model"], source=repr(str(path)))
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        _set_rng_state(state["rng"])
    return state


def saved_config(path) -> Config | None:
    """The Config stored in one of our checkpoints (``None`` for official / plain files or an
    unreadable path; errors are reported when the model is loaded)."""
    from .checkpoint import load_file

    try:
        obj = load_file(path)
    except Exception:  # noqa: BLE001 - reported later by model_from_checkpoint
        return None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        known = Config.__dataclass_fields__
        return Config.from_dict({k: v for k, v in obj["config"].items() if k in known})
    return None


def model_from_checkpoint(path, cfg: Config | None = None, map_location="cpu"):
    """``(model in eval mode, cfg, class_names)`` from a checkpoint.

    Ours carry their config (model shape, classes); for official / plain state_dict files
    ``cfg`` must describe the model (``arch``, ``layers``, ``classes``...). Structural keys
    (arch, layers, classes, bins, zoom_factor, use_ppm, tiny_width) come from the checkpoint.
    """
    from .checkpoint import load_checkpoint, load_file

    path = Path(path)
    obj = load_file(path)  # FileNotFoundError / ValueError naming the file and the fault
    class_names = None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        saved = Config.from_dict(
            {k: v for k, v in obj["config"].items() if k in Config.__dataclass_fields__}
        )
        keys = (
            "arch",
            "layers",
            "classes",
            "bins",
            "zoom_factor",
            "use_ppm",
            "tiny_width",
            "ignore_index",
        )
        structural = {k: getattr(saved, k) for k in keys}
        cfg = saved if cfg is None else cfg.replace(**structural)
        class_names = obj.get("class_names")
    elif cfg is None:
        raise ValueError(f"{path} holds no config: pass --preset/--classes/--layers for it")
    del obj
    build_cfg = cfg.replace(pretrained=False, backbone_path=None)
    model = build_model(build_cfg)
    load_checkpoint(model, path, map_location=map_location)
    model.eval()
    return model, cfg, class_names


# -------------------------------------------------------------------------------- runtime


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    if spec == "auto":
        spec = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
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


def _plot(log_path: Path, png_path: Path) -> str | None:
    """Draw ``curves.png`` from ``metrics.jsonl`` (atomically); returns None when it was drawn,
    else the reason it was not (one line)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - reported in one line by the caller
        return f"matplotlib cannot be imported ({type(e).__name__}: {e}); pip install matplotlib"
    from .atomic import write_atomic

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return f"{log_path} holds no epoch yet"
    fig = None
    try:
        ep = [r["epoch"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(ep, [r["loss"] for r in rows], "o-", label="main loss")
        axes[0].plot(ep, [r["aux_loss"] for r in rows], "s--", label="aux loss")
        axes[0].set_title("training loss")
        axes[0].legend()
        axes[1].plot(ep, [r["lr"] for r in rows], "o-")
        axes[1].set_title("learning rate (backbone)")
        val = [(r["epoch"], r["val_mIoU"], r.get("val_allAcc")) for r in rows if "val_mIoU" in r]
        if val:
            axes[2].plot([v[0] for v in val], [v[1] for v in val], "o-", label="mIoU")
            axes[2].plot([v[0] for v in val], [v[2] for v in val], "s--", label="pixel acc")
            axes[2].legend()
        axes[2].set_title("validation")
        for a in axes:
            a.set_xlabel("epoch")
            a.grid(alpha=0.3)
        fig.tight_layout()
        write_atomic(png_path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    except Exception as e:  # noqa: BLE001 - a plot never stops training; reported by the caller
        return f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        if fig is not None:
            plt.close(fig)
    return None


def _find_resume(cfg: Config) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = cfg.out_dir / "last.pth"
        return p if p.is_file() else None
    p = Path(cfg.resume)
    if not p.is_file():
        raise FileNotFoundError(f"--resume: no such checkpoint {p}")
    return p


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


def train(cfg: Config, log=print) -> dict:
    """Train as described by ``cfg``; returns ``{'model', 'history', 'metrics', 'out_dir'}``.

    Writes ``last.pth`` (every ``save_freq`` epochs and at the end), ``metrics.jsonl`` (one JSON
    object per epoch) and ``curves.png`` to ``cfg.out_dir`` on rank 0.
    """
    from tqdm import tqdm

    from .evaluate import evaluate

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    rank, world = init_distributed(device)
    main = rank == 0
    say = log if main else (lambda *a, **k: None)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)  # noqa: NPY002
    torch.manual_seed(cfg.seed)

    validates = bool(cfg.final_eval or cfg.eval_every)
    if _find_resume(cfg) is None:  # a resumed run has its weights already
        require_backbone(cfg)
    ds = build_datasets(cfg, splits=("train", "val") if validates else ("train",))
    classes = int(cfg.classes or ds["train"].num_classes)
    if cfg.classes and getattr(ds["train"], "num_classes", classes) != classes:
        raise ValueError(
            f"classes={cfg.classes} but dataset {cfg.dataset!r} has {ds['train'].num_classes}"
        )
    cfg = cfg.replace(classes=classes)
    class_names = list(getattr(ds["train"], "class_names", None) or range(classes))
    class_names = [str(c) for c in class_names]
    train_set = AugmentedDataset(ds["train"], _train_transform(cfg), seed=cfg.seed)
    val_set = AugmentedDataset(ds["val"], _eval_transform(), seed=cfg.seed) if validates else None

    model = build_model(cfg, classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    # different dropout masks per rank (the same initial weights: DDP broadcasts rank 0's)
    torch.manual_seed(_mix(cfg.seed, rank, 1))

    steps_per_epoch = len(train_set) // cfg.batch_size
    if cfg.max_iters_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_iters_per_epoch)
    max_iter = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.base_lr, cfg.head_lr_mult),
        lr=cfg.base_lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scheduler = PolyLR(optimizer, max_iter=max_iter, power=cfg.power)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and device.type == "cuda")

    start_epoch = 0
    resume = _find_resume(cfg)
    if resume is None and cfg.resume == "auto":
        say(f"--resume auto: no {cfg.out_dir / 'last.pth'}, starting from scratch")
    if resume is not None:
        state = load_training_state(
            resume, model, optimizer, scheduler, scaler, map_location=device
        )
        start_epoch = int(state["epoch"])
        # the schedule follows the current config (e.g. more epochs than the first run)
        scheduler.max_iter, scheduler.power = max_iter, cfg.power
        say(f"resumed from {resume} at epoch {start_epoch} (iteration {scheduler.last_epoch})")
        if world > 1:  # ranks must not share dropout masks
            torch.manual_seed(_mix(cfg.seed, rank, start_epoch, 2))

    net = model
    if world > 1:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net, backend=cfg.compile_backend)

    out_dir = cfg.out_dir
    log_path = out_dir / "metrics.jsonl"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(_to_yaml(cfg.to_dict()))
        if start_epoch == 0 and log_path.exists():
            log_path.unlink()
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"training {type(model).__name__} ({n_params / 1e6:.2f}M params, {classes} classes) on "
        f"{cfg.dataset} ({len(train_set)} images) for {cfg.epochs} epochs x {steps_per_epoch} "
        f"steps, batch {cfg.batch_size} on {world} x {device}; output in {out_dir}"
    )

    history: list[dict] = []
    metrics = None
    plot_failures: set[str] = set()
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        loader = build_train_loader(cfg, train_set, rank, world, epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # main, aux, count
        t0 = time.perf_counter()
        t_last, n_last = t0, 0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (main and cfg.progress),
            dynamic_ncols=True,
            leave=True,
        )
        images = 0
        last_lr = optimizer.param_groups[0]["lr"]
        for i, (x, y) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = last_lr = optimizer.param_groups[0]["lr"]
            main_loss, aux_loss = train_step(net, x, y, optimizer, scheduler, scaler, cfg, device)
            sums += torch.stack(
                [main_loss.double(), aux_loss.double(), torch.ones((), device=device).double()]
            )
            images += x.shape[0] * world
            n_last += x.shape[0] * world
            if main and cfg.progress and (i % 5 == 4 or i == steps_per_epoch - 1):
                now = time.perf_counter()
                bar.set_postfix(
                    loss=f"{float(main_loss):.4f}",
                    lr=f"{lr:.2e}",
                    img_s=f"{n_last / max(now - t_last, 1e-9):.1f}",
                )
                t_last, n_last = now, 0
            bar.update(1)
        bar.close()
        if world > 1:
            dist.all_reduce(sums)
        elapsed = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "iteration": int(scheduler.last_epoch),
            "loss": float(sums[0] / sums[2]),
            "aux_loss": float(sums[1] / sums[2]),
            "lr": last_lr,
            "time": round(elapsed, 3),
            "img_per_s": round(images / max(elapsed, 1e-9), 2),
        }
        last = epoch + 1 == cfg.epochs
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or last):
            metrics = evaluate(model, val_set, cfg, device=device, rank=rank, world=world)
            row.update(
                val_mIoU=metrics["mIoU"],
                val_mAcc=metrics["mAcc"],
                val_allAcc=metrics["allAcc"],
                val_mIoU_present=metrics.get("mIoU_present", metrics["mIoU"]),
            )
        history.append(row)
        say(
            f"epoch {epoch + 1}: loss {row['loss']:.4f} aux {row['aux_loss']:.4f} "
            f"lr {row['lr']:.2e} {row['time']:.1f}s {row['img_per_s']:.1f} img/s"
            + (
                f" val mIoU {row['val_mIoU']:.4f} allAcc {row['val_allAcc']:.4f}"
                if "val_mIoU" in row
                else ""
            )
        )
        if main:
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if (epoch + 1) % cfg.save_freq == 0 or last:
                save_checkpoint(
                    out_dir / "last.pth",
                    model,
                    optimizer,
                    scheduler,
                    scaler,
                    epoch + 1,
                    cfg,
                    extra={"class_names": class_names},
                )
            if cfg.plot:
                why = _plot(log_path, out_dir / "curves.png")
                if why is not None and why not in plot_failures:  # once per reason and run
                    plot_failures.add(why)
                    say(f"curves.png not drawn: {why}")

    if cfg.final_eval:
        if metrics is None or not history or "val_mIoU" not in history[-1]:
            metrics = evaluate(model, val_set, cfg, device=device, rank=rank, world=world)
        from .metrics import format_table

        metrics["class_names"] = class_names
        say(f"evaluation on {cfg.dataset}/{cfg.val_split} ({len(val_set)} images):")
        say(format_table(metrics))
        if main:
            (out_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
    if world > 1:
        dist.barrier()
    return {
        "model": model,
        "history": history,
        "metrics": metrics,
        "out_dir": out_dir,
        "config": cfg,
    }


def _to_yaml(d: dict) -> str:
    try:
        import yaml

        return yaml.safe_dump(d, sort_keys=False)
    except ImportError:  # pragma: no cover
        return json.dumps(d, indent=1)
