"""PSPNet-50 training step on CPU: the fused loss against the materialised one.

    python -m benchmarks.compare_loss --rounds 5 --out benchmarks/results/<stem>

Every run is a fresh process (``python -m benchmarks.compare_loss --child VARIANT``) that builds
PSPNet-50 (150 classes, random weights, seed 0), makes one untimed warm-up step and then
``--steps`` timed ones: forward with labels (batch 2, 3 x 473 x 473, a band of ignored pixels),
``main + 0.4 aux`` backward, an SGD step. The parent reads the child's peak memory (max RSS,
``os.wait4``). Variants:

* ``fused``: ``nn.CrossEntropyLoss(ignore_index=255)``, so the model takes both losses and the
  prediction from ``psp_kernels.upsample_cross_entropy`` on the stride-8 logits;
* ``materialised``: the same loss in a module that is not an ``nn.CrossEntropyLoss``, so the model
  upsamples the logits to 473 x 473 first and calls it, as the official model does.

Each round runs both, alternating which goes first (a busy machine slows both alike); the report
gives the medians and the median over rounds of the per-round ratios materialised / fused (step
time; peak memory), the losses of both (equal up to rounding), and the load average around
every run.

``--in-process N`` then decomposes the step in one process, N rounds of three steps each: the
two variants and a step without any cross-entropy (the loss is the two heads' stride-8 logits'
mean: the same backbone, heads and backward), so that ``variant - no loss`` is what the
variant's loss costs inside the step, and ``materialised / no loss`` the most any loss
implementation could gain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

from .compare_deploy import report

VARIANTS = ("fused", "materialised")
CLASSES = 150
TARGETS = {"memory": 0.15, "speed": 1.15}  # peak memory >= 15% lower, step >= 1.15x faster


class MaterialisedCrossEntropy(nn.Module):
    """``nn.CrossEntropyLoss`` behind a module that is not one: PSPNet gives it the upsampled
    logits (its materialised path)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(**kwargs)

    def forward(self, logits, target):
        return self.ce(logits, target)


def _model_and_data(batch: int, crop: int):
    import pspnet

    torch.manual_seed(0)
    model = pspnet.PSPNet(layers=50, classes=CLASSES, pretrained=False).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=gen)
    y = torch.randint(0, CLASSES, (batch, crop, crop), generator=gen)
    y[:, : crop // 8] = 255
    return model, x, y


def _child(variant: str, batch: int, crop: int, steps: int, threads: int) -> dict:
    """One variant's run in this process: step times and losses."""
    torch.set_num_threads(threads)
    model, x, y = _model_and_data(batch, crop)
    if variant == "fused":
        model.criterion = nn.CrossEntropyLoss(ignore_index=255)
    else:
        model.criterion = MaterialisedCrossEntropy(ignore_index=255)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=gen)
    y = torch.randint(0, CLASSES, (batch, crop, crop), generator=gen)
    y[:, : crop // 8] = 255

    def step():
        opt.zero_grad(set_to_none=True)
        _, main, aux = model(x, y)
        model.loss(main, aux).backward()
        opt.step()
        return main.item(), aux.item()

    first = step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "times_s": times, "first_losses": first}


def _decompose(args, log=print) -> dict:
    """Steps (forward + backward) of both variants and of no loss, alternating, one process."""
    torch.set_num_threads(args.threads)
    model, x, y = _model_and_data(args.batch, args.crop)
    criteria = {"fused": nn.CrossEntropyLoss(ignore_index=255),
                "materialised": MaterialisedCrossEntropy(ignore_index=255)}  # fmt: skip

    def step(variant):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if variant == "no loss":  # the model's own layers, no cross-entropy (benchmark only)
            feats = model.layer2(model.layer1(model.layer0(x)))
            mid = model.layer3(feats)
            loss = model._classify(model.layer4(mid)).mean() + model.aux(mid).mean()
        else:
            model.criterion = criteria[variant]
            _, main, aux = model(x, y)
            loss = model.loss(main, aux)
        loss.backward()
        return time.perf_counter() - t0

    variants = ("no loss", "fused", "materialised")
    step("fused"), step("materialised")  # warm-up
    times = {v: [] for v in variants}
    for r in range(args.in_process):
        for v in variants if r % 2 == 0 else variants[::-1]:
            times[v].append(step(v))
        log(f"in-process round {r}: " + ", ".join(f"{v} {times[v][-1]:.2f} s" for v in variants)
            + f", load {os.getloadavg()[0]:.2f}")  # fmt: skip
    base = times["no loss"]
    return {
        "times_s": times,
        "loss_cost_median_s": {v: statistics.median(a - b for a, b in zip(times[v], base,
                                                                          strict=True))
                               for v in ("fused", "materialised")},
        "ceiling_paired_median": statistics.median(
            a / b for a, b in zip(times["materialised"], base, strict=True)),
    }  # fmt: skip


def _run_child(variant: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.compare_loss", "--child", variant,
           "--batch", str(args.batch), "--crop", str(args.crop), "--steps", str(args.steps),
           "--threads", str(args.threads)]  # fmt: skip
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    rec = json.loads(out.strip().splitlines()[-1])
    rec["max_rss_bytes"] = usage.ru_maxrss * 1024  # Linux: kilobytes
    rec["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return rec


def compare(args, log=print) -> dict:
    runs = []
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        pair = {}
        for variant in order:
            pair[variant] = rec = _run_child(variant, args)
            step = statistics.median(rec["times_s"])
            rss = rec["max_rss_bytes"] / 2**30
            log(f"round {r} {variant}: step {step:.2f} s, max RSS {rss:.2f} GiB, "
                f"load {rec['load_average']}")  # fmt: skip
        runs.append(pair)
    summary = {}
    for v in VARIANTS:
        summary[v] = {
            "step_median_s": statistics.median(t for p in runs for t in p[v]["times_s"]),
            "max_rss_median_gib": statistics.median(p[v]["max_rss_bytes"] / 2**30 for p in runs),
        }
    med = {v: [statistics.median(p[v]["times_s"]) for p in runs] for v in VARIANTS}
    ratio = [a / b for a, b in zip(med["materialised"], med["fused"], strict=True)]
    memory = [1 - p["fused"]["max_rss_bytes"] / p["materialised"]["max_rss_bytes"] for p in runs]
    decomposed = _decompose(args, log) if args.in_process else None
    return {
        "decomposed": decomposed,
        "batch": args.batch, "crop": args.crop, "classes": CLASSES, "steps": args.steps,
        "threads": args.threads, "rounds": args.rounds, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "runs": runs, "summary": summary,
        "speedup_paired_median": statistics.median(ratio), "speedup_per_round": ratio,
        "memory_saving_paired_median": statistics.median(memory), "memory_saving_per_round": memory,
        "command": "python -m benchmarks.compare_loss " + " ".join(sys.argv[1:]),
    }  # fmt: skip


def render(rec: dict) -> str:
    s, speed, mem = rec["summary"], rec["speedup_paired_median"], rec["memory_saving_paired_median"]
    verdict = {True: "**pass**", False: "**MISS**"}
    lines = [
        f"PSPNet-50 training step on CPU: batch {rec['batch']}, 3x{rec['crop']}x{rec['crop']}, "
        f"{rec['classes']} classes, float32, {rec['threads']} threads, {rec['rounds']} rounds "
        f"(each variant a fresh process per round, alternating order), {rec['steps']} timed "
        f"steps per process after one warm-up; torch {rec['torch']}, {rec['cpu_count']} CPUs.",
        "",
        "| | materialised | fused | fused vs materialised |",
        "|---|---|---|---|",
        f"| step time, median (s) | {s['materialised']['step_median_s']:.2f} "
        f"| {s['fused']['step_median_s']:.2f} "
        f"| **{speed:.2f}x faster** (median per-round ratio) |",
        f"| peak memory, max RSS, median (GiB) | {s['materialised']['max_rss_median_gib']:.2f} "
        f"| {s['fused']['max_rss_median_gib']:.2f} "
        f"| **{100 * mem:.1f}% lower** (median per round) |",
        "",
        f"Targets: peak memory >= {100 * TARGETS['memory']:.0f}% lower: "
        f"{verdict[mem >= TARGETS['memory']]}; step >= {TARGETS['speed']}x faster: "
        f"{verdict[speed >= TARGETS['speed']]}.",
        "",
        "| round | variant | step times (s) | max RSS (GiB) | load average before, after "
        "| first losses (main, aux) |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for i, pair in enumerate(rec["runs"]):
        for v, r in pair.items():
            times = ", ".join(f"{t:.2f}" for t in r["times_s"])
            losses = ", ".join(f"{x:.6f}" for x in r["first_losses"])
            load = ", ".join(str(a) for a in r["load_average"])
            rss = r["max_rss_bytes"] / 2**30
            lines.append(f"| {i} | {v} | {times} | {rss:.3f} | {load} | {losses} |")
    d = rec.get("decomposed")
    if d:
        cost = d["loss_cost_median_s"]
        lines += [
            "",
            f"In one process, {len(d['times_s']['no loss'])} rounds of forward + backward "
            "(no optimiser step), alternating: the loss costs "
            f"{cost['materialised']:.2f} s materialised and {cost['fused']:.2f} s fused (median "
            "per-round difference from the step without cross-entropy); materialised / no "
            f"loss = {d['ceiling_paired_median']:.2f}x, the most any loss could gain.",
            "",
            "| variant | forward + backward times (s) |",
            "|---|---|",
        ]
        for v, times in d["times_s"].items():
            lines.append(f"| {v} | {', '.join(f'{t:.2f}' for t in times)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_loss", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="timed steps per process (default 2)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=473)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--in-process", type=int, default=3, metavar="N",
                   help="rounds of the one-process decomposition (0: none; default 3)")  # fmt: skip
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="output stem (writes <out>.json and <out>.md)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.batch, args.crop, args.steps, args.threads)))
        return 0
    rec = compare(args)
    report(rec, render(rec), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
