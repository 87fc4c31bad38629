"""Render benchmark results: a table per case, the target checks, and a speed-up plot.

Used at the end of ``pytest benchmarks/`` (``benchmarks/conftest.py``) and on a saved run::

    python -m benchmarks.report results.json [--out DIR]

prints the same tables as the end-of-run summary and writes ``<stem>.md`` and ``<stem>.png`` into
``DIR`` (default: next to the JSON). A result record is one benchmark's ``extra_info`` as written by
:func:`benchmarks.harness.measure`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "CMP_TARGETS",
    "TARGETS",
    "cmp_target_checks",
    "load_records",
    "main",
    "plot_speedups",
    "render",
    "speedups",
    "target_checks",
    "write_outputs",
]

COMPILED_PROVIDERS = ("compiled", "compiled-max-autotune")
CMP_CASES = ("headcmp", "modelcmp")
FUSED_PROVIDERS = ("fused", "fused-compiled")

# The headline configuration the targets refer to (PPM on H100/H200, bf16).
HEADLINE = {"n": 8, "c": 2048, "h": 60, "w": 60, "r": 512, "dtype": "bfloat16"}
# Concat-free head targets (from the issue): PSPNet-50 1x3x473x473 CPU forward, FLOPs at 473,
# training peak memory at N=8 473 on a GPU.
CMP_TARGETS = {"cpu_fwd_speedup": 1.15, "flops_ratio": 0.80, "train_mem_ratio": 0.90}
TARGETS = {
    "ppm fwd": {"vs_eager": 3.0, "vs_compiled": 1.5, "pct_peak": 80.0},
    "ppm fwd+bwd": {"vs_eager": 2.0, "vs_compiled": 1.3, "memory_le_eager": True},
    "train step": {"vs_eager": 1.0, "vs_compiled": 1.0},
}


def load_records(path: str | Path) -> list[dict]:
    """Result records from a pytest-benchmark JSON file (``--benchmark-json``)."""
    data = json.loads(Path(path).read_text())
    records = []
    for bench in data.get("benchmarks", []):
        extra = dict(bench.get("extra_info") or {})
        if "case" not in extra:
            continue
        if extra.get("time_s") is None and bench.get("stats"):
            extra["time_s"] = bench["stats"].get("median")
        extra.setdefault("test", bench.get("fullname") or bench.get("name"))
        records.append(extra)
    return records


def _key(r: dict) -> tuple:
    return (r["case"], r["pass"], r["config"], r.get("device_name"))


def speedups(records: Sequence[dict]) -> list[dict]:
    """Each record plus ``vs_eager`` and ``vs_compiled``: eager's / best compiled time over its own.

    The best compiled time is the fastest of the ``compiled*`` providers on the same case, pass and
    configuration. A ratio is ``None`` when either time is missing.
    """
    eager, best, concat = {}, {}, {}
    for r in records:
        if (
            r["case"] in CMP_CASES
            and r["provider"].startswith("concat-")
            or r["provider"] == "concat"
        ):
            concat[(*_key(r), r["provider"].endswith("-compiled"))] = r
        t = r.get("time_s")
        if t is None:
            continue
        if r["provider"] == "eager":
            eager[_key(r)] = t
        elif r["provider"] in COMPILED_PROVIDERS:
            best[_key(r)] = min(best.get(_key(r), float("inf")), t)
    out = []
    for r in records:
        t = r.get("time_s")
        e, c = eager.get(_key(r)), best.get(_key(r))
        row = {
            **r,
            "vs_eager": e / t if e and t else None,
            "vs_compiled": c / t if c and t else None,
        }
        if r["case"] in CMP_CASES:
            base = concat.get((*_key(r), r["provider"].endswith("-compiled"))) or {}
            row["vs_concat"] = _ratio(base.get("time_s"), t)
            for field in ("flops", "saved_bytes", "peak_mem_bytes"):
                row[f"{field}_vs_concat"] = _ratio(r.get(field), base.get(field))
        out.append(row)
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _gbps(value) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _tables(rows: Sequence[dict]) -> list[str]:
    lines: list[str] = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["case"] not in CMP_CASES:
            groups.setdefault((r["case"], r["pass"]), []).append(r)
    header = (
        "| config | provider | time (ms) | x eager | x best compile | GB/s | % peak BW "
        "| peak mem (MiB) | first call (s) |"
    )
    for (case, pass_), group in groups.items():
        lines += ["", f"### {case} {pass_}", "", header, "|" + "---|" * 9]
        group = sorted(group, key=lambda r: (r.get("input_bytes") or 0, r["config"]))
        for r in group:
            t = r.get("time_s")
            lines.append(
                f"| {r['config']} | {r['provider']} | {_fmt(t and t * 1e3, '.3f')} "
                f"| {_fmt(r['vs_eager'], '.2f')} | {_fmt(r['vs_compiled'], '.2f')} "
                f"| {_gbps(r.get('gbps'))} | {_fmt(r.get('pct_peak'), '.0f')} "
                f"| {_mib(r.get('peak_mem_bytes'))} | {_fmt(r.get('first_call_s'), '.2f')} |"
            )
    return lines


def _pct(ratio) -> str:
    return "-" if ratio is None else f"{100 * (ratio - 1):+.0f}%"


def _cmp_tables(rows: Sequence[dict]) -> list[str]:
    """Head-layout comparison: one table per case and pass, ``concat_free`` against ``concat``."""
    lines: list[str] = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["case"] in CMP_CASES:
            groups.setdefault((r["case"], r["pass"]), []).append(r)
    header = (
        "| config | provider | time (ms) | x concat | GFLOP | FLOPs vs concat "
        "| saved for bwd (MiB) | saved vs concat | peak mem (MiB) | peak mem vs concat "
        "| first call (s) |"
    )
    for (case, pass_), group in groups.items():
        lines += ["", f"### {case} {pass_} (head layouts)", "", header, "|" + "---|" * 11]
        group = sorted(group, key=lambda r: (r.get("input_bytes") or 0, r["config"], r["provider"]))
        for r in group:
            t = r.get("time_s")
            flops = r.get("flops")
            lines.append(
                f"| {r['config']} | {r['provider']} | {_fmt(t and t * 1e3, '.1f')} "
                f"| {_fmt(r.get('vs_concat'), '.2f')} | {_fmt(flops and flops / 1e9, '.1f')} "
                f"| {_pct(r.get('flops_vs_concat'))} | {_mib(r.get('saved_bytes'))} "
                f"| {_pct(r.get('saved_bytes_vs_concat'))} | {_mib(r.get('peak_mem_bytes'))} "
                f"| {_pct(r.get('peak_mem_bytes_vs_concat'))} "
                f"| {_fmt(r.get('first_call_s'), '.2f')} |"
            )
    return lines


def cmp_target_checks(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """``(target, status, detail)`` for the concat-free head (rows from :func:`speedups`).

    * PSPNet-50 1x3x473x473 eval forward on CPU: ``concat_free`` >= 1.15x faster than ``concat``;
    * FLOPs of that forward (any device): ``concat_free`` <= 0.80 x ``concat`` (-20%);
    * training (``modelcmp fwd+bwd``) at N=8 473 on a GPU: peak memory <= 0.90 x ``concat``.
    """
    t = CMP_TARGETS
    free = [r for r in rows if r["case"] == "modelcmp" and r["provider"] == "concat_free"]
    free = [r for r in free if r.get("crop") == 473]
    checks = []
    cpu = [r for r in free if r["pass"] == "fwd" and r.get("device") == "cpu" and r["n"] == 1]
    cpu = [r for r in cpu if r.get("vs_concat") is not None]
    name = "PSPNet-50 1x3x473x473 CPU forward, concat_free vs concat"
    if not cpu:
        checks.append((name, "not run", "needs modelcmp fwd N1 473 on CPU (--bench-cpu-model)"))
    for r in cpu:
        ok = r["vs_concat"] >= t["cpu_fwd_speedup"]
        detail = (
            f"{r['vs_concat']:.2f}x (target >= {t['cpu_fwd_speedup']:g}x) on {r['device_name']}"
        )
        checks.append((name, "pass" if ok else "MISS", detail))
    fl = [r for r in free if r["pass"] == "fwd" and r.get("flops_vs_concat") is not None]
    name = "PSPNet-50 473 forward FLOPs, concat_free vs concat"
    if not fl:
        checks.append((name, "not run", "needs modelcmp fwd at 473"))
    else:
        r = fl[0]
        ok = r["flops_vs_concat"] <= t["flops_ratio"]
        detail = (
            f"{_pct(r['flops_vs_concat'])} ({r['flops'] / 1e9:.0f} vs "
            f"{r['flops'] / r['flops_vs_concat'] / 1e9:.0f} GFLOP at N{r['n']}; target <= "
            f"{_pct(t['flops_ratio'])})"
        )
        checks.append((name, "pass" if ok else "MISS", detail))
    mem = [r for r in free if r["pass"] == "fwd+bwd" and r.get("device") == "cuda" and r["n"] == 8]
    mem = [r for r in mem if r.get("peak_mem_bytes_vs_concat") is not None]
    name = "PSPNet-50 N8 473 training peak memory (GPU), concat_free vs concat"
    if not mem:
        checks.append((name, "not run", "needs modelcmp fwd+bwd N8 473 on a GPU"))
    for r in mem:
        ok = r["peak_mem_bytes_vs_concat"] <= t["train_mem_ratio"]
        detail = (
            f"{_pct(r['peak_mem_bytes_vs_concat'])} ({r['dtype']}; target <= "
            f"{_pct(t['train_mem_ratio'])}) on {r['device_name']}"
        )
        checks.append((name, "pass" if ok else "MISS", detail))
    return checks


def _is_headline(r: dict) -> bool:
    return r.get("device") == "cuda" and all(r.get(k) == v for k, v in HEADLINE.items())


def target_checks(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """``(target, status, detail)`` for each target; status ``pass``, ``MISS`` or ``not run``.

    The targets are stated for the PPM at N=8, C=2048, 60x60, R=512, bf16 on an H100/H200 and for
    the PSPNet-50 training step at N=8 on a GPU. The fused side of the training step is the faster
    of ``fused`` and ``fused-compiled``.
    """
    checks: list[tuple[str, str, str]] = []

    def ratio_check(name, r, field, bound, what):
        value = r.get(field) if r else None
        if value is None:
            checks.append((name, "not run", f"needs {what}"))
        else:
            status = "pass" if value >= bound else "MISS"
            detail = f"{value:.2f}x (target >= {bound:g}x) on {r['device_name']}"
            checks.append((name, status, detail))

    for pass_ in ("fwd", "fwd+bwd"):
        target = TARGETS[f"ppm {pass_}"]
        pool = [r for r in rows if r["case"] == "ppm" and r["pass"] == pass_ and _is_headline(r)]
        fused = next((r for r in pool if r["provider"] == "fused"), None)
        eager = next((r for r in pool if r["provider"] == "eager"), None)
        what = f"ppm {pass_} fused + eager/compiled at N8 C2048 60x60 R512 bf16 on a GPU"
        ratio_check(f"ppm {pass_} vs eager", fused, "vs_eager", target["vs_eager"], what)
        bound = target["vs_compiled"]
        ratio_check(f"ppm {pass_} vs best compile", fused, "vs_compiled", bound, what)
        if "pct_peak" in target:
            pct = fused.get("pct_peak") if fused else None
            if pct is None:
                checks.append((f"ppm {pass_} bandwidth", "not run", f"needs {what} (known GPU)"))
            else:
                status = "pass" if pct >= target["pct_peak"] else "MISS"
                checks.append(
                    (
                        f"ppm {pass_} bandwidth",
                        status,
                        f"{pct:.0f}% of {fused['peak_gbps']:.0f} GB/s "
                        f"(target >= {target['pct_peak']:g}%) on {fused['device_name']}",
                    )
                )
        if target.get("memory_le_eager"):
            fm = fused.get("peak_mem_bytes") if fused else None
            em = eager.get("peak_mem_bytes") if eager else None
            if fm is None or em is None:
                checks.append((f"ppm {pass_} peak memory", "not run", f"needs {what}"))
            else:
                status = "pass" if fm <= em else "MISS"
                checks.append(
                    (
                        f"ppm {pass_} peak memory",
                        status,
                        f"fused {_mib(fm)} MiB vs eager {_mib(em)} MiB (target <= eager)",
                    )
                )

    train = [r for r in rows if r["case"] == "train" and r.get("device") == "cuda" and r["n"] == 8]
    configs = sorted({r["config"] for r in train})
    if not configs:
        checks.append(("train step vs eager and compile", "not run", "needs N8 steps on a GPU"))
    for config in configs:
        pool = [r for r in train if r["config"] == config and r.get("time_s")]
        fused = [r for r in pool if r["provider"] in FUSED_PROVIDERS]
        others = {
            "eager": [r for r in pool if r["provider"] == "eager"],
            "compile": [r for r in pool if r["provider"] in COMPILED_PROVIDERS],
        }
        for what, base in others.items():
            name = f"train step {config} vs {what}"
            if not fused or not base:
                checks.append((name, "not run", "needs fused and " + what))
                continue
            best_f = min(fused, key=lambda r: r["time_s"])
            best_b = min(base, key=lambda r: r["time_s"])
            ratio = best_b["time_s"] / best_f["time_s"]
            status = "pass" if ratio > 1.0 else "MISS"
            checks.append(
                (
                    name,
                    status,
                    f"{best_f['provider']} {ratio:.2f}x faster than {best_b['provider']} "
                    "(target > 1x)",
                )
            )
    return checks


def render(records: Sequence[dict], title: str = "psp-kernels benchmarks") -> str:
    """The summary as Markdown: environment, a table per case and pass, then the targets."""
    rows = speedups(records)
    devices = sorted({f"{r.get('device_name')} ({r.get('device')})" for r in rows})
    versions = sorted({f"torch {r.get('torch')}, triton {r.get('triton')}" for r in rows})
    lines = [f"## {title}", ""]
    lines.append(f"Device: {', '.join(devices) or '-'}; {', '.join(versions) or ''}")
    lines.append(
        "time: CUDA-event median per call on GPU (host-clock median on CPU); x eager / x best "
        "compile: speed-up over eager and over the faster compile mode; GB/s: ideal bytes / time; "
        "peak mem: extra memory one call allocates; first call: includes compilation."
    )
    if not rows or any(r["case"] not in CMP_CASES for r in rows):
        lines += _tables(rows)
        lines += ["", "### Targets (PPM N8 C2048 60x60 R512 bf16 on H100/H200; training step N8)"]
        lines += ["", "| target | status | detail |", "|---|---|---|"]
        for name, status, detail in target_checks(rows):
            lines.append(f"| {name} | {status} | {detail} |")
    if any(r["case"] in CMP_CASES for r in rows):
        lines += [
            "",
            "## Head layouts: concat vs concat_free",
            "",
            "x concat: the concat provider's time over this one's (compiled against compiled); "
            "GFLOP: FlopCounterMode over one call; saved for bwd: distinct tensors autograd "
            "saves in the forward (parameters and inputs excluded); peak mem: GPU only; "
            "... vs concat: relative change.",
        ]
        lines += _cmp_tables(rows)
        lines += ["", "### Targets (concat-free head)", ""]
        lines += ["| target | status | detail |", "|---|---|---|"]
        for name, status, detail in cmp_target_checks(rows):
            lines.append(f"| {name} | {status} | {detail} |")
    return "\n".join(lines) + "\n"


def plot_speedups(records: Sequence[dict], path: str | Path) -> Path | None:
    """PNG of speed-up over eager against input size, one panel per case, pass and dtype.

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
    rows = [r for r in speedups(records) if r["provider"] != "eager" and r["vs_eager"]]
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


def write_outputs(records: Sequence[dict], out_dir: str | Path, stem: str = "summary") -> dict:
    """Write ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; return ``{"md": .., "png": ..}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(render(records))
    png = plot_speedups(records, out_dir / f"{stem}.png")
    return {"md": md, "png": png}


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Render the summary table and speed-up plot of a pytest-benchmark JSON.",
    )
    parser.add_argument("json", help="file written by pytest benchmarks/ --benchmark-json=FILE")
    parser.add_argument("--out", help="directory for <stem>.md and <stem>.png (default: beside)")
    args = parser.parse_args(None if argv is None else list(argv))
    path = Path(args.json)
    records = load_records(path)
    if not records:
        print(f"{path}: no psp-kernels benchmark records found", file=sys.stderr)
        return 1
    paths = write_outputs(records, args.out or path.parent, path.stem)
    print(render(records))
    print(f"wrote {paths['md']}" + (f" and {paths['png']}" if paths["png"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
