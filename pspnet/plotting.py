"""Training curves: loss, learning rate and validation metrics per epoch, from ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_curves"]


def plot_curves(log_path: Path, png_path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plotting is optional
        return False
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return False
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
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return True
