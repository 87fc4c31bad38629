"""The speed-up plot of a benchmark run: speed-up over eager against input size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_speedups"]


def plot_speedups(records: Sequence[dict], path: str | Path) -> Path | None:
    """PNG of speed-up over eager against input size, one panel per case, pass and dtype.

    ``records``: result records with their speed-ups (:func:`benchmarks.summary.speedups`).

    Returns the path, or ``None`` when there is nothing to plot (no non-eager time with an eager
    time beside it) or matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return None
    rows = [r for r in records if r["provider"] != "eager" and r.get("vs_eager")]
    panels: dict[tuple, dict[str, list]] = {}
    for r in rows:
        panel = panels.setdefault((r["case"], r["pass"], r.get("dtype")), {})
        panel.setdefault(r["provider"], []).append((r["input_bytes"] / 1e6, r["vs_eager"]))
    if not panels:
        return None
    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 3.6 * nrows), squeeze=False)
    for ax, ((case, pass_, dtype), lines) in zip(axes.flat, panels.items()):
        for provider, points in sorted(lines.items()):
            points.sort()
            ax.plot(*zip(*points), marker="o", label=provider)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{case} {pass_} {dtype}")
        ax.set_xlabel("input size (MB)")
        ax.set_ylabel("speed-up over eager")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    devices = ", ".join(sorted({str(r.get("device_name")) for r in rows}))
    fig.suptitle(f"psp-kernels speed-up over eager PyTorch ({devices})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
