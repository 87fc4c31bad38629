"""Render benchmark results: a table per case, the target checks, and a speed-up plot.

Used at the end of ``pytest benchmarks/`` (``benchmarks/conftest.py``) and on a saved run::

    python -m benchmarks.summary results.json [--out DIR]

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

from .grids import CMP_CASES
from .targets import (
    CMP_TARGETS,
    COMPILED_PROVIDERS,
    TARGETS,
    _mib,
    _pct,
    cmp_target_checks,
    target_checks,
)

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


def plot_speedups(records, path):
    """:func:`benchmarks.plot.plot_speedups` (PNG of the speed-ups; ``None`` without matplotlib)."""
    from .plot import plot_speedups as plot

    return plot(speedups(records), path)


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
        prog="python -m benchmarks.summary",
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
