"""Training curves: loss, learning rate and validation metrics per epoch, from ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["draw_curves"]


def draw_curves(log_path: Path, png_path: Path) -> str | None:
    """Draw ``curves.png`` from ``metrics.jsonl`` (atomically); returns None when it was drawn,
    else the reason it was not (one line)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - reported in one line by the caller
        return f"matplotlib cannot be imported ({type(e).__name__}: {e}); pip install matplotlib"
    from .atomic import write_atomic
    from .errors import UserError
    from .run_folder import read_log_rows

    try:
        rows = read_log_rows(log_path)
    except (UserError, OSError) as e:  # a damaged log: reported in one line by the caller
        return str(e).splitlines()[0]
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
