"""Evaluation as the official hszhao/semseg ``test.py``: single/multi-scale, flip, sliding window.

For every image (normalised, so padding with 0 is padding with the mean colour) and every scale
``s``: resize so that the long side is ``s * base_size`` (``base_size=0``: the image's own long
side), then either

- ``whole``: run the model on the whole resized image (PSPNet accepts any size), or
- ``slide``: the official ``scale_process``: pad to at least the crop size, slide a crop-size
  window with stride ``ceil(crop * stride_rate)`` (default 2/3), average the softmax of
  overlapping windows, crop the padding away;

softmax probabilities (averaged with those of the horizontally flipped input when ``flip``) are
resized back to the original size, averaged over scales, and the argmax is the prediction.
Metrics come from a confusion matrix (:mod:`pspnet.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .errors import UserError
from .metrics import ConfusionMeter, format_table
from .runtime import autocast_ctx, init_distributed, local_rank, resolve_device, unwrap

__all__ = [
    "net_process",
    "slide_inference",
    "scaled_size",
    "predict_probs",
    "predict_with_config",
    "evaluate",
    "run_eval",
]


def _forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


@torch.no_grad()
def net_process(model: nn.Module, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Softmax probabilities ``(N, C, H, W)`` of ``x`` ``(N, 3, H, W)``; logits of another size
    are resized bilinearly (``align_corners=True``, as the official code). With ``flip`` the
    result is the mean of the input's and the flipped input's (flipped back) probabilities."""
    n = x.shape[0]
    inp = torch.cat([x, x.flip(3)], 0) if flip else x
    out = _forward_logits(model, inp).float()
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=True)
    prob = out.softmax(1)
    if flip:
        prob = (prob[:n] + prob[n:].flip(3)) / 2
    return prob


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    h, w = v
    return int(h), int(w)


@torch.no_grad()
def slide_inference(
    model: nn.Module,
    x: torch.Tensor,
    classes: int,
    crop_size,
    stride_rate: float = 2.0 / 3.0,
    flip: bool = False,
) -> torch.Tensor:
    """The official ``scale_process`` on a batch: probabilities ``(N, classes, H, W)``.

    Pads ``x`` symmetrically with 0 (the mean of normalised images) up to the crop size, slides a
    ``crop_size`` window with stride ``ceil(crop * stride_rate)`` (the last window is aligned to
    the border), averages overlapping windows' probabilities and removes the padding.
    """
    crop_h, crop_w = _pair(crop_size)
    n, _, h, w = x.shape
    pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        x = F.pad(x, (left, pad_w - left, top, pad_h - top), value=0.0)
    new_h, new_w = x.shape[-2:]
    stride_h = int(math.ceil(crop_h * stride_rate))
    stride_w = int(math.ceil(crop_w * stride_rate))
    grid_h = int(math.ceil((new_h - crop_h) / stride_h)) + 1
    grid_w = int(math.ceil((new_w - crop_w) / stride_w)) + 1
    prob = x.new_zeros((n, classes, new_h, new_w), dtype=torch.float32)
    count = x.new_zeros((1, 1, new_h, new_w), dtype=torch.float32)
    for ih in range(grid_h):
        for iw in range(grid_w):
            e_h = min(ih * stride_h + crop_h, new_h)
            e_w = min(iw * stride_w + crop_w, new_w)
            s_h, s_w = e_h - crop_h, e_w - crop_w
            prob[:, :, s_h:e_h, s_w:e_w] += net_process(model, x[:, :, s_h:e_h, s_w:e_w], flip)
            count[:, :, s_h:e_h, s_w:e_w] += 1
    prob /= count
    return prob[:, :, top : top + h, left : left + w]


def scaled_size(h: int, w: int, scale: float, base_size: int = 0) -> tuple[int, int]:
    """Official multi-scale size: long side ``round(scale * base_size)``, aspect kept
    (``base_size=0``: the image's long side)."""
    base = base_size or max(h, w)
    long_size = max(1, round(scale * base))  # a scale so small it rounds to 0: one pixel
    if h > w:
        return long_size, max(1, round(long_size / h * w))
    return max(1, round(long_size / w * h)), long_size


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    x: torch.Tensor,
    classes: int,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    crop_size=None,
    base_size: int = 0,
    stride_rate: float = 2.0 / 3.0,
) -> torch.Tensor:
    """Class probabilities ``(N, classes, H, W)`` of normalised images ``x`` ``(N, 3, H, W)``,
    averaged over ``scales`` (and flips), at the input size."""
    if x.dim() != 4:
        raise ValueError(f"x must be (N, 3, H, W), got {tuple(x.shape)}")
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and crop_size is None:
        raise ValueError("mode='slide' needs crop_size")
    if not scales:
        raise ValueError("scales must not be empty")
    h, w = x.shape[-2:]
    total = None
    for s in scales:
        sh, sw = scaled_size(h, w, float(s), base_size)
        xs = (
            x
            if (sh, sw) == (h, w)
            else F.interpolate(x, (sh, sw), mode="bilinear", align_corners=False)
        )
        if mode == "slide":
            p = slide_inference(model, xs, classes, crop_size, stride_rate, flip)
        else:
            p = net_process(model, xs, flip)
        if p.shape[-2:] != (h, w):
            p = F.interpolate(p, (h, w), mode="bilinear", align_corners=False)
        total = p if total is None else total + p
    return total / len(scales)


def predict_with_config(model: nn.Module, x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """:func:`predict_probs` of ``x`` with ``cfg``'s inference settings (``classes``, ``scales``,
    ``eval_flip``, ``eval_mode``, ``crop_size``, ``base_size``, ``stride_rate``) and its autocast
    (``amp``): what ``eval`` and ``predict`` run."""
    with autocast_ctx(cfg, x.device):
        return predict_probs(
            model,
            x,
            int(cfg.classes),
            cfg.scales,
            cfg.eval_flip,
            cfg.eval_mode,
            cfg.crop_size,
            cfg.base_size,
            cfg.stride_rate,
        )


class _Shard(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...`` (no padding: every sample is evaluated once)."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    cfg: Config,
    device=None,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    log=print,
) -> dict:
    """Metrics (:func:`pspnet.metrics.compute_metrics`) of ``model`` on ``dataset`` (items:
    normalised image, label at the image's size), using ``cfg``'s scales / flip / mode /
    crop_size / base_size / stride_rate / val_batch_size. With ``world > 1`` each rank takes
    its shard and the confusion matrices are summed.

    A dataset that marks unreadable samples (``AugmentedDataset(on_error="mark")``) stops the
    evaluation with an error naming the file and its index, or with ``cfg.skip_bad_samples``
    leaves them out (each logged once with ``log``); ``skipped_samples`` counts them."""
    from .data.faults import BadSampleLog, collate_samples, unpack
    from .data.loaders import init_eval_worker

    model = unwrap(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    classes = int(cfg.classes)
    meter = ConfusionMeter(classes, cfg.ignore_index, device=device)
    bs = cfg.val_batch_size
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=bs,
        sampler=_Shard(len(dataset), rank, world),
        num_workers=min(cfg.workers, 4),
        worker_init_fn=partial(init_eval_worker, max_image_pixels=cfg.max_image_pixels),
        generator=torch.Generator().manual_seed(cfg.seed),  # not the global RNG's stream
        pin_memory=device.type == "cuda",
        collate_fn=collate_samples if getattr(dataset, "on_error", "") == "mark" else None,
    )
    bad_log = BadSampleLog(getattr(cfg, "skip_bad_samples", False), log if rank == 0 else _quiet)
    it = loader
    if progress and rank == 0:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", dynamic_ncols=True)
    try:
        for batch in it:
            x, y, bad = unpack(batch)
            bad_log.handle(bad)
            if x is None:  # every sample of the batch was bad (and skipped)
                continue
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            meter.update(predict_with_config(model, x, cfg).argmax(1), y)
    finally:
        model.train(was_training)
    meter.all_reduce()
    skipped = torch.tensor([bad_log.take()], dtype=torch.int64, device=device)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(skipped)
    names = getattr(dataset, "class_names", None)
    metrics = meter.compute([str(c) for c in names] if names is not None else None)
    metrics["skipped_samples"] = int(skipped)
    return metrics


def _quiet(*a, **k):
    pass


def run_eval(cfg: Config, checkpoint: str, log=print, onnx=None) -> dict:
    """Load ``checkpoint`` (or the exported model ``onnx``, run by onnxruntime on CPU), evaluate
    on ``cfg.dataset`` / ``cfg.val_split``, print the table."""
    from .build import model_from_checkpoint
    from .data.files import set_max_image_pixels
    from .data.loaders import AugmentedDataset, build_datasets
    from .data.transforms import eval_transform

    set_max_image_pixels(cfg.max_image_pixels)

    if onnx is not None:
        from .onnx_runtime import model_from_onnx

        device, (rank, world) = torch.device("cpu"), (0, 1)
        model, cfg, class_names = model_from_onnx(onnx, cfg, threads=cfg.threads)
    else:
        device = resolve_device(cfg.device, local_rank())
        rank, world = init_distributed(device)
        model, cfg, class_names = model_from_checkpoint(checkpoint, cfg)
        model.to(device)
    ds = build_datasets(cfg, splits=("val",))["val"]
    if getattr(ds, "num_classes", cfg.classes) != cfg.classes:
        raise UserError(
            f"the checkpoint has {cfg.classes} classes but {cfg.dataset!r} has {ds.num_classes}"
        )
    val = AugmentedDataset(ds, eval_transform(), seed=cfg.seed, on_error="mark")
    metrics = evaluate(
        model, val, cfg, device=device, rank=rank, world=world, progress=cfg.progress, log=log
    )
    if class_names and not metrics.get("class_names"):
        metrics["class_names"] = class_names
    if rank == 0:
        log(
            f"{cfg.dataset}/{cfg.val_split}: {len(val)} images, scales {list(cfg.scales)}, "
            f"flip {cfg.eval_flip}, mode {cfg.eval_mode}"
        )
        log(format_table(metrics))
    return metrics
