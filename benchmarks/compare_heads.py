"""Interleaved comparison of PSPNet's two head layouts on one machine (CPU or GPU).

    python -m benchmarks.compare_heads --threads 2 --out benchmarks/results/<stem>

Builds PSPNet-50 once and a copy with the other head (same weights), then times the eval forward
of ``head="concat"`` and ``head="concat_free"`` alternately (AB, BA, AB... so a shared, busy
machine slows both alike) and reports the minimum (``time_s``) and the median of the repeats, and
the median over rounds of the per-round ratio concat / concat_free (``speedup_paired_median``).
Also counts FLOPs (``FlopCounterMode``) of one eval forward each and, at ``--train-batch``, of one
training forward + backward (labels, ``main + 0.4 aux`` loss), and the bytes autograd saves for
backward in that training forward (``saved_bytes``; :func:`benchmarks.harness.saved_tensor_bytes`).

Writes ``<out>.json`` (pytest-benchmark-like: each record in ``benchmarks[i].extra_info``, so
``python -m benchmarks.summary <out>.json`` re-renders it) and ``<out>.md`` (the summary tables and
target checks). Use ``pytest benchmarks/ --bench-cpu-model`` for the same forward inside the suite
(sequential, not interleaved).
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

from . import summary
from .grids import CLASSES, TrainShape
from .harness import device_name, saved_tensor_bytes, synchronize

HEADS = ("concat", "concat_free")


def _record(shape: TrainShape, pass_: str, head: str, device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover
        triton_version = None
    return {
        "case": "modelcmp",
        "pass": pass_,
        "provider": head,
        "config": shape.label,
        "input_bytes": shape.input_bytes,
        **shape.as_info(),
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "time_s": None,
        "peak_mem_bytes": None,
        "saved_bytes": None,
        "flops": None,
        "first_call_s": None,
        "ideal_bytes": None,
    }


def _timed(fn, device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def compare(crop=473, batch=1, repeats=5, train_batch=2, device="cpu", seed=0, log=print):
    """Run the comparison; return the result records (see the module docstring)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    base = pspnet.PSPNet(layers=50, classes=CLASSES, pretrained=False, head="concat")
    models = {}
    for head in HEADS:
        m = copy.deepcopy(base)
        m.head = head
        models[head] = m.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, crop, crop, generator=gen).to(device)
    shape = TrainShape(batch, crop)
    records = {h: _record(shape, "fwd", h, device) for h in HEADS}
    times = {h: [] for h in HEADS}

    def forward(head):
        with torch.no_grad():
            return models[head](x)

    outs = {}
    for head in HEADS:  # first call: allocator / one-off set-up, not counted
        t0 = time.perf_counter()
        outs[head] = forward(head)
        synchronize(device)
        records[head]["first_call_s"] = time.perf_counter() - t0
        log(f"first call {head}: {records[head]['first_call_s']:.2f} s")
    scale = outs["concat"].abs().max().item() or 1.0
    err = (outs["concat_free"] - outs["concat"]).abs().max().item() / scale
    records["concat_free"]["max_rel_err"] = err
    del outs
    for i in range(repeats):
        order = HEADS if i % 2 == 0 else HEADS[::-1]
        for head in order:
            times[head].append(_timed(lambda h=head: forward(h), device))
        log(f"round {i}: " + ", ".join(f"{h} {times[h][-1]:.2f} s" for h in HEADS))
    for head in HEADS:
        with FlopCounterMode(display=False) as counter:
            forward(head)
        rec = records[head]
        rec.update(
            time_s=min(times[head]),
            time_median_s=statistics.median(times[head]),
            times_s=times[head],
            rounds=repeats,
            flops=int(counter.get_total_flops()),
        )
    # each round ran both heads back to back: the median of the per-round ratios is the most
    # load-robust speed-up on a shared machine (min and median of each head are also kept)
    paired = [a / b for a, b in zip(times["concat"], times["concat_free"])]
    records["concat_free"]["speedup_paired_median"] = statistics.median(paired)
    out = [records[h] for h in HEADS]

    if train_batch:
        tshape = TrainShape(train_batch, crop)
        xt = torch.randn(train_batch, 3, crop, crop, generator=gen).to(device)
        size = base.output_size(crop, crop)
        yt = torch.randint(0, CLASSES, (train_batch, *size), generator=gen).to(device)
        for head in HEADS:
            model = models[head].train()
            rec = _record(tshape, "fwd+bwd", head, device)
            exclude = [*model.parameters(), *model.buffers(), xt]
            torch.manual_seed(seed)

            def step(model=model):
                _, main_loss, aux_loss = model(xt, yt)
                (main_loss + 0.4 * aux_loss).backward()

            t0 = time.perf_counter()
            with FlopCounterMode(display=False) as counter:
                rec["saved_bytes"] = saved_tensor_bytes(step, exclude)
            synchronize(device)
            rec["flops"] = int(counter.get_total_flops())
            rec["first_call_s"] = time.perf_counter() - t0  # one step, under the counters
            model.zero_grad(set_to_none=True)
            log(f"training {head}: {rec['saved_bytes'] / 2**20:.0f} MiB saved, "
                f"{rec['flops'] / 1e9:.0f} GFLOP")  # fmt: skip
            out.append(rec)
    return out


def write(records, out: Path, preamble: str = "") -> dict:
    """``<out>.json`` and ``<out>.md``; returns their paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "machine_info": {"machine": platform.machine(), "processor": platform.processor()},
        "benchmarks": [
            {"name": f"{r['case']}-{r['pass']}-{r['config']}-{r['provider']}", "extra_info": r}
            for r in records
        ],
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path = out.with_suffix(".md")
    body = summary.render(records, title="PSPNet head layouts: concat vs concat_free")
    md_path.write_text((preamble + "\n\n" if preamble else "") + body)
    return {"json": json_path, "md": md_path}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_heads", description=__doc__)
    p.add_argument("--crop", type=int, default=473)
    p.add_argument("--batch", type=int, default=1, help="eval forward batch (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per head (default 5)")
    p.add_argument("--train-batch", type=int, default=2, help="0: no training counts")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="output stem (writes <out>.json and <out>.md)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = compare(args.crop, args.batch, args.repeats, args.train_batch, args.device)
    print(summary.render(records, title="PSPNet head layouts: concat vs concat_free"))
    if args.out:
        paths = write(records, Path(args.out))
        print(f"wrote {paths['json']} and {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
