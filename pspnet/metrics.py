"""Segmentation metrics from a confusion matrix: IoU, mIoU, class accuracy, pixel accuracy.

``confusion_matrix(pred, target, C)[t, p]`` counts pixels of ground-truth class ``t`` predicted as
``p``; pixels whose target is ``ignore_index`` (or outside ``[0, C)``) are left out. From it:

- intersection_c = cm[c, c]; union_c = sum_p cm[c, p] + sum_t cm[t, c] - cm[c, c]
- IoU_c = intersection_c / union_c, NaN when class c is absent from both prediction and ground truth
- acc_c = intersection_c / (pixels of class c in the ground truth), NaN when there are none
- ``mIoU`` / ``mAcc``: the official means (hszhao/semseg ``tool/test.py``, ``cal_acc``): over all
  ``C`` classes, a NaN class counting as 0. That is the number papers report.
- ``mIoU_present`` / ``mAcc_present``: the means over the classes that are not NaN (the classes
  present in the ground truth or the prediction, resp. in the ground truth). They differ from the
  official ones only when a class has no ground-truth pixels in the evaluated set; those classes
  are listed in ``absent_classes``.
- pixel accuracy ``allAcc`` = trace / total. With no labelled pixel at all every mean is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "confusion_matrix",
    "intersection_union",
    "compute_metrics",
    "format_table",
    "ConfusionMeter",
]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``(C, C)`` int64 confusion matrix (rows: ground truth, columns: prediction) via bincount.

    ``pred`` and ``target`` are integer tensors of the same shape. Target pixels equal to
    ``ignore_index`` or outside ``[0, num_classes)`` are excluded; predictions must be class ids.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("pred and target must be integer class-id tensors")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    p, t = pred[valid], target[valid]
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"pred holds class ids outside [0, {num_classes})")
    cm = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes)


def intersection_union(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (intersection, union, target count) of a confusion matrix, as float64."""
    cm = cm.double()
    inter = torch.diagonal(cm)
    target = cm.sum(1)
    union = target + cm.sum(0) - inter
    return inter, union, target


def _nanmean(x: torch.Tensor) -> float:
    keep = ~torch.isnan(x)
    return float(x[keep].mean()) if bool(keep.any()) else float("nan")


def compute_metrics(cm: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """``mIoU``, ``mAcc`` (official: over all classes, absent ones 0), ``mIoU_present``,
    ``mAcc_present`` (over present classes), ``allAcc``, per-class ``iou`` / ``acc`` lists (NaN
    for classes with no pixels), ``absent_classes`` (ids with no ground-truth pixel) and
    ``absent_class_names``."""
    inter, union, target = intersection_union(cm)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, inter / union.clamp_min(1), nan)
    acc = torch.where(target > 0, inter / target.clamp_min(1), nan)
    total = float(cm.sum())
    names = list(class_names) if class_names is not None else None
    absent = [int(i) for i in torch.nonzero(target == 0).flatten()]
    if total > 0:
        miou, macc = float(iou.nan_to_num(0.0).mean()), float(acc.nan_to_num(0.0).mean())
    else:
        miou = macc = float("nan")
    return {
        "mIoU": miou,
        "mAcc": macc,
        "allAcc": float(inter.sum()) / total if total > 0 else float("nan"),
        "mIoU_present": _nanmean(iou),
        "mAcc_present": _nanmean(acc),
        "absent_classes": absent,
        "absent_class_names": [str(names[i]) for i in absent] if names else None,
        "iou": iou.tolist(),
        "acc": acc.tolist(),
        "class_names": names,
        "pixels": int(total),
        "definitions": {
            "mIoU": f"mean IoU over all {len(iou)} classes, a class absent from ground truth and "
            "prediction counting 0 (hszhao/semseg tool/test.py cal_acc)",
            "mAcc": f"mean class accuracy over all {len(iou)} classes, a class with no "
            "ground-truth pixel counting 0 (official)",
            "mIoU_present": "mean IoU over the classes in the ground truth or the prediction",
            "mAcc_present": "mean class accuracy over the classes in the ground truth",
            "absent_classes": "class ids with no ground-truth pixel in the evaluated images",
        },
    }


def format_table(metrics: dict) -> str:
    """A printable per-class IoU / accuracy table, then the official mIoU / mAcc / allAcc, the
    present-class means and the classes absent from the ground truth."""
    iou, acc = metrics["iou"], metrics["acc"]
    names = metrics.get("class_names") or [str(i) for i in range(len(iou))]
    width = max(8, max((len(n) for n in names), default=0))

    def f(v: float) -> str:
        return "     -" if math.isnan(v) else f"{v:6.4f}"

    lines = [f"{'id':>4}  {'class':<{width}}  {'IoU':>6}  {'acc':>6}"]
    for i, (n, a, b) in enumerate(zip(names, iou, acc)):
        lines.append(f"{i:>4}  {n:<{width}}  {f(a)}  {f(b)}")
    k = len(iou)
    lines.append(
        f"mIoU {metrics['mIoU']:.4f}  mAcc {metrics['mAcc']:.4f}  allAcc {metrics['allAcc']:.4f}"
        f"  (official: mean over all {k} classes, an absent class counts 0)"
    )
    absent = metrics.get("absent_classes")
    if absent is None:  # metrics without the absent-class keys: nothing more to say
        return "\n".join(lines)
    if absent:
        n_iou = sum(1 for v in iou if not math.isnan(v))
        shown = ", ".join(f"{names[i]} ({i})" for i in absent[:20])
        more = f" ... and {len(absent) - 20} more" if len(absent) > 20 else ""
        lines.append(
            f"present-class mean: mIoU_present {metrics['mIoU_present']:.4f}  mAcc_present "
            f"{metrics['mAcc_present']:.4f}  (IoU over the {n_iou} classes in the ground truth "
            f"or prediction, accuracy over the {k - len(absent)} in the ground truth)"
        )
        lines.append(f"absent from the ground truth: {len(absent)} of {k}: {shown}{more}")
    else:
        lines.append(f"every one of the {k} classes appears in the ground truth")
    return "\n".join(lines)


class ConfusionMeter:
    """Accumulates a confusion matrix over batches; ``all_reduce()`` sums it over processes."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device="cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(
            self.cm.device
        )

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.cm)

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        return compute_metrics(self.cm, class_names)
