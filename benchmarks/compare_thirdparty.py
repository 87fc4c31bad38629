"""mmsegmentation's PSPNet-R50-D8, as mmseg runs it and converted by ``pspnet.convert_ppm``.

    python -m benchmarks.compare_thirdparty --threads 2 --out benchmarks/results/<stem>

Builds the model from mmseg's config (random weights, BatchNorm statistics randomised), deep-copies
it and converts the copy, then times CPU inference (``encode_decode``: backbone, decode head,
resize to the input) of both alternately in one process (AB, BA, AB...: a shared machine slows
both alike): the minimum and median of each, and the median over rounds of the per-round ratio
original / converted. Counts the FLOPs of one forward each (``torch.utils.flop_counter``) and
checks that the logits agree. Writes ``<out>.json`` and ``<out>.md``. Needs mmsegmentation.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import pspnet
from pspnet.testing import randomize_batchnorm

from . import mmseg_models

MODELS = ("original", "converted")


def compare(size=(512, 1024), batch=1, repeats=5, seed=0, log=print) -> dict:
    """Run the comparison; returns the results (see the module docstring)."""
    torch.manual_seed(seed)
    original = randomize_batchnorm(mmseg_models.build(mmseg_models.pspnet_r50_d8()), seed=1).eval()
    models = {"original": original, "converted": pspnet.convert_ppm(copy.deepcopy(original))}
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
    metas = [dict(img_shape=tuple(size), ori_shape=tuple(size), pad_shape=tuple(size))] * batch

    def forward(name):
        with torch.no_grad():
            return models[name].encode_decode(x, metas)

    res = {m: {} for m in MODELS}
    outs = {}
    for name in MODELS:
        t0 = time.perf_counter()
        outs[name] = forward(name)
        res[name]["first_call_s"] = time.perf_counter() - t0
    scale = outs["original"].abs().max().item()
    res["converted"]["max_rel_err"] = (
        outs["converted"] - outs["original"]
    ).abs().max().item() / scale
    times = {m: [] for m in MODELS}
    for i in range(repeats):
        for name in MODELS if i % 2 == 0 else MODELS[::-1]:
            t0 = time.perf_counter()
            forward(name)
            times[name].append(time.perf_counter() - t0)
        log(f"round {i}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in MODELS))
    for name in MODELS:
        with FlopCounterMode(display=False) as counter:
            forward(name)
        res[name].update(time_s=min(times[name]), time_median_s=statistics.median(times[name]),
                         times_s=times[name], flops=int(counter.get_total_flops()))  # fmt: skip
    paired = [a / b for a, b in zip(times["original"], times["converted"], strict=True)]
    res["converted"]["speedup_paired_median"] = statistics.median(paired)
    res["converted"]["speedups_paired"] = paired
    res["converted"]["flops_saved"] = 1 - res["converted"]["flops"] / res["original"]["flops"]
    return dict(model="mmseg PSPNet-R50-D8 (Cityscapes config, 19 classes)",
                input=[batch, 3, *size], threads=torch.get_num_threads(),
                torch=torch.__version__, results=res)  # fmt: skip


def render(data: dict) -> str:
    res = data["results"]
    conv = res["converted"]
    lines = [
        f"# {data['model']}: original vs pspnet.convert_ppm",
        "",
        f"CPU inference (`encode_decode`), input {'x'.join(map(str, data['input']))}, float32, "
        f"{data['threads']} threads, torch {data['torch']}, interleaved in one process.",
        "",
        "| model | min (s) | median (s) | GFLOP |",
        "|---|---|---|---|",
    ]
    for name in MODELS:
        r = res[name]
        lines.append(f"| {name} | {r['time_s']:.3f} | {r['time_median_s']:.3f} | "
                     f"{r['flops'] / 1e9:.1f} |")  # fmt: skip
    lines += [
        "",
        f"- paired median speed-up (original / converted, per round): "
        f"**{conv['speedup_paired_median']:.3f}x** (rounds: "
        f"{', '.join(f'{s:.3f}' for s in conv['speedups_paired'])}); target >= 1.15x",
        f"- FLOPs: **{100 * conv['flops_saved']:.1f}% fewer**; target >= 18%",
        f"- max abs logit difference / max abs logit: {conv['max_rel_err']:.2e}",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_thirdparty", description=__doc__)
    p.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per model (default 5)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--out", default=None, help="output stem (writes <out>.json and <out>.md)")
    args = p.parse_args(argv)
    if not mmseg_models.available():
        print("mmsegmentation is not installed: pip install mmsegmentation==1.2.2 "
              "mmengine==0.10.7 mmcv-lite==2.1.0 ftfy", file=sys.stderr)  # fmt: skip
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    data = compare(tuple(args.size), args.batch, args.repeats)
    data["machine"] = {"machine": platform.machine(), "processor": platform.processor()}
    text = render(data)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
