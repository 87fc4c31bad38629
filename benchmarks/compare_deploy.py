"""CPU inference of PSPNet-50: PyTorch eager (ours, official layout) vs onnxruntime (ours).

    python -m benchmarks.compare_deploy --threads 2 --out benchmarks/results/<stem>

Builds PSPNet-50 (21 classes, random weights, random BatchNorm statistics) once, and with the same
weights the official-layout model (``head="concat"`` with its PPM swapped for the plain official
``PlainPPM``: adaptive pooling, 1x1 conv, BatchNorm, ReLU, bilinear upsampling and concat, all
eager PyTorch), exports ours with :func:`pspnet.export_onnx` (dynamic shapes) and runs it through
onnxruntime with the same thread count. Then times one ``N x 3 x crop x crop`` eval forward of the
three, interleaved in one process: each round runs all three back to back, rotating which goes
first, so a shared, busy machine slows them alike. Reports the median of each, and the median
over rounds of the per-round ratios (``official / onnxruntime``, target >= 1.5x),
the outputs' agreement, and the load average before and after (how calm the machine was).
Writes ``<out>.json`` (every time) and ``<out>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import pspnet
from pspnet.onnx_runtime import OnnxModel

from .modules import PlainPPM, randomize_batchnorm

PROVIDERS = ("official-eager", "ours-eager", "ours-onnxruntime")
TARGET = 1.5  # onnxruntime >= 1.5x faster than the official-layout eager model


def build_models(classes: int = 21, seed: int = 0):
    """``(ours, official)``: PSPNet-50 (default head) and the official layout, same weights."""
    torch.manual_seed(seed)
    ours = pspnet.PSPNet(layers=50, classes=classes, pretrained=False)
    randomize_batchnorm(ours, seed=seed + 1)
    official = copy.deepcopy(ours)
    official.head = "concat"
    plain = PlainPPM(2048, 2048 // len(ours.bins), ours.bins)
    plain.load_state_dict(ours.ppm.state_dict())
    official.ppm = plain
    return ours.eval(), official.eval()


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


def compare(crop=473, batch=1, rounds=7, threads=2, onnx_path=None, log=print) -> dict:
    """Run the comparison (see the module docstring); returns the result record."""
    torch.set_num_threads(threads)
    ours, official = build_models()
    load_start = _load()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(onnx_path or Path(tmp) / "pspnet50.onnx")
        t0 = time.perf_counter()
        pspnet.export_onnx(ours, path)
        export_s = time.perf_counter() - t0
        log(f"exported {path} in {export_s:.1f} s")
        runtime = OnnxModel(path, providers=["CPUExecutionProvider"], threads=threads)
        x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0))
        fns = {
            "official-eager": lambda: official(x),
            "ours-eager": lambda: ours(x),
            "ours-onnxruntime": lambda: runtime(x),
        }
        with torch.no_grad():
            outs = {name: fn() for name, fn in fns.items()}  # warm-up, not timed
            scale = outs["official-eager"].abs().max().item()
            errors = {
                name: (out - outs["official-eager"]).abs().max().item() / scale
                for name, out in outs.items()
            }
            del outs
            times = {name: [] for name in PROVIDERS}
            for r in range(rounds):
                order = PROVIDERS[r % 3 :] + PROVIDERS[: r % 3]
                for name in order:
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append(time.perf_counter() - t0)
                log(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in PROVIDERS))
    ort = times["ours-onnxruntime"]
    paired = {
        "official / onnxruntime": [a / b for a, b in zip(times["official-eager"], ort)],
        "ours eager / onnxruntime": [a / b for a, b in zip(times["ours-eager"], ort)],
        "official / ours eager": [
            a / b for a, b in zip(times["official-eager"], times["ours-eager"])
        ],
    }
    import onnxruntime

    return {
        "input": [batch, 3, crop, crop],
        "threads": threads,
        "rounds": rounds,
        "times_s": times,
        "median_s": {n: statistics.median(t) for n, t in times.items()},
        "min_s": {n: min(t) for n, t in times.items()},
        "paired_median": {k: statistics.median(v) for k, v in paired.items()},
        "paired_min_max": {k: [min(v), max(v)] for k, v in paired.items()},
        "max_rel_err_vs_official": errors,
        "export_s": export_s,
        "load_average_start_end": [load_start, _load()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "command": "python -m benchmarks.compare_deploy " + " ".join(sys.argv[1:]),
    }


def render(rec: dict) -> str:
    """The Markdown tables of one result record."""
    med, mn = rec["median_s"], rec["min_s"]
    ratio = rec["paired_median"]["official / onnxruntime"]
    verdict = "**pass**" if ratio >= TARGET else "**fail**"
    n, _, h, w = rec["input"]
    lines = [
        f"PSPNet-50 CPU inference, {n}x3x{h}x{w} float32, {rec['threads']} threads, "
        f"{rec['rounds']} interleaved rounds; load average {rec['load_average_start_end'][0]} "
        f"at the start, {rec['load_average_start_end'][1]} at the end "
        f"({rec['cpu_count']} CPUs); torch {rec['torch']}, onnxruntime {rec['onnxruntime']}.",
        "",
        "| model | median (s) | min (s) | max rel. diff vs official |",
        "|---|---|---|---|",
    ]
    for name in PROVIDERS:
        lines.append(
            f"| {name} | {med[name]:.3f} | {mn[name]:.3f} | "
            f"{rec['max_rel_err_vs_official'][name]:.1e} |"
        )
    lines += ["", "| ratio (per round, same run) | median | range |", "|---|---|---|"]
    for key, value in rec["paired_median"].items():
        lo, hi = rec["paired_min_max"][key]
        lines.append(f"| {key} | {value:.2f}x | {lo:.2f}-{hi:.2f}x |")
    lines += [
        "",
        f"Target: onnxruntime >= {TARGET}x faster than the official-layout eager model "
        f"(median per-round ratio): {ratio:.3f}x, {verdict}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_deploy", description=__doc__)
    p.add_argument("--crop", type=int, default=473)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    p.add_argument("--onnx", default=None, help="keep the exported model at this path")
    p.add_argument("--out", default=None, help="output stem (writes <out>.json and <out>.md)")
    args = p.parse_args(argv)
    rec = compare(args.crop, args.batch, args.rounds, args.threads, args.onnx)
    report(rec, render(rec), args.out)
    return 0


def report(rec: dict, text: str, out=None) -> None:
    """Print ``text``; with ``out``, write ``<out>.json`` (``rec``) and ``<out>.md`` (``text``)."""
    print(text)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(rec, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
