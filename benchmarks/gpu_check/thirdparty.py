"""mmsegmentation's PSPHead at Cityscapes shapes in ``gpu_check``: the original head in eager mode
and under ``torch.compile``, and the head converted by ``pspnet.convert_ppm``, eval forward.

C = 2048 at 64x128 (512x1024 crops) and 128x256 (1024x2048 images), ``align_corners=False``,
batch 2, bfloat16 autocast (float32 in ``--dry-run``, tiny shapes). Rows in the format of
:mod:`.timing` (case ``mmseg-psphead``), checked against the eager head before they are timed;
every row says why when mmsegmentation is not installed or the time budget is spent.
"""

from __future__ import annotations

import copy
import time

import torch

from .. import mmseg_models
from ..harness import CHECK_RTOL, max_rel_error, synchronize
from .timing import _time

PROVIDERS = ("eager", "compiled", "converted")
GPU_SIZES = ((64, 128), (128, 256))
COST_S = 60.0  # one size, all three providers, compilation included


def _heads(channels: int, device):
    import pspnet
    from pspnet.testing import randomize_batchnorm

    torch.manual_seed(0)
    cfg = mmseg_models.psp_head(in_channels=channels, channels=channels // 4, in_index=0)
    head = randomize_batchnorm(mmseg_models.build(cfg), seed=1).to(device).eval()
    return {
        "eager": head,
        "compiled": torch.compile(copy.deepcopy(head)),
        "converted": pspnet.convert_ppm(copy.deepcopy(head)),
    }


def run(device: torch.device, dry_run: bool, deadline: float, log=print) -> list[dict]:
    """The rows (see the module docstring)."""
    channels, sizes = (16, ((9, 17),)) if dry_run else (2048, GPU_SIZES)
    dtype = torch.float32 if dry_run else torch.bfloat16
    rows = []

    def row(size, provider, **kw):
        return {"case": "mmseg-psphead", "pass": "fwd", "provider": provider,
                "baseline": "eager", "config": f"N=2 C={channels} {size[0]}x{size[1]}",
                "dtype": str(dtype).replace("torch.", ""), **kw}  # fmt: skip

    reason = None if mmseg_models.available() else "mmsegmentation is not installed"
    heads = _heads(channels, device) if reason is None else None
    for size in sizes:
        left = deadline - time.perf_counter()
        why = reason or (f"time budget: {left:.0f} s left" if left < COST_S else None)
        if why:
            rows += [row(size, p, skipped=why) for p in PROVIDERS]
            continue
        x = torch.randn(2, channels, *size, device=device)
        ref = None
        for provider in PROVIDERS:
            if dry_run and provider == "compiled":
                rows.append(row(size, provider, skipped="torch.compile is not timed in --dry-run"))
                continue

            def fn(head=heads[provider], x=x):
                with torch.no_grad(), torch.autocast(device.type, dtype, enabled=not dry_run):
                    return head([x])

            t0 = time.perf_counter()
            out = fn().float()
            synchronize(device)
            r = row(size, provider, first_call_s=time.perf_counter() - t0)
            if ref is None:
                ref = out
            else:
                r["max_rel_err"] = max_rel_error([out], [ref])
                r["check_ok"] = r["max_rel_err"] <= CHECK_RTOL.get(dtype, 5e-2)
            r["time_s"] = r["first_call_s"] if dry_run else _time(fn, device, 1e-3, False)
            rows.append(r)
            log(f"time   mmseg-psphead {r['config']} {provider}: {r['time_s'] * 1e3:.3f} ms")
        torch._dynamo.reset()
    for r in rows:
        base = next((b for b in rows if b["config"] == r["config"] and b["provider"] == "eager"
                     and b.get("time_s")), None)  # fmt: skip
        comp = next((b for b in rows if b["config"] == r["config"] and b["provider"] == "compiled"
                     and b.get("time_s")), None)  # fmt: skip
        t = r.get("time_s")
        r["vs_baseline"] = base["time_s"] / t if base and t else None
        r["vs_compiled"] = comp["time_s"] / t if comp and t else None
    return rows
