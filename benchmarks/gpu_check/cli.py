"""``python -m benchmarks.gpu_check``: parity, then timings, then the results files."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_BUDGET_S = 450.0  # of the 8 minutes: leaves time for start-up and the files


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="One command for a GPU machine: parity of every op, then the timings.",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="the same code path on CPU through Triton's interpreter at tiny shapes; results "
        "into a temporary directory",
    )  # fmt: skip
    parser.add_argument("--out", help="directory for <gpu>_<date>.{json,md}")
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S,
        help=f"seconds for parity + timings (default {DEFAULT_BUDGET_S:g})",
    )  # fmt: skip
    parser.add_argument("--no-model", action="store_true", help="skip the cost model's times")
    parser.add_argument("--skip-parity", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _environment(device) -> dict:
    import torch
    import triton

    env = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "device": device.type,
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["capability"] = list(torch.cuda.get_device_capability(device))
        env["sms"] = props.multi_processor_count
        env["memory_gib"] = props.total_memory / 2**30
    else:
        env["gpu"] = "cpu-dry-run"
    return env


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    import torch

    from psp_kernels import interpreting

    from ..run_gpu import result_stem
    from . import estimates, output, parity, thirdparty, timing

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("benchmarks.gpu_check needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        return 2
    if args.dry_run and not interpreting():
        print("--dry-run needs TRITON_INTERPRET=1 set before triton is imported", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    env = _environment(device)
    print(f"gpu_check on {env['gpu']}: torch {env['torch']}, triton {env['triton']}", flush=True)
    deadline = start + args.budget_s
    notes = []
    shape = timing.DRY_SHAPE if args.dry_run else timing.GPU_SHAPE

    modelled, skipped_model = None, None
    if args.no_model:
        skipped_model = "cost model skipped (--no-model)"
    elif args.dry_run:
        skipped_model = (
            "cost model skipped in --dry-run (it compiles for a GPU: python -m "
            "psp_kernels.compile_check --workload ppm ppm-train head loss)"
        )
    else:
        gpu, arch = estimates.model_gpu(env["gpu"], tuple(env["capability"]))
        modelled = estimates.ModelRun(shape, gpu, arch)
        loss_shape = timing.GPU_LOSS["loss-bf16"]
        modelled_loss = estimates.ModelRun(loss_shape, gpu, arch, workloads=("loss",))

    parity_rows = [] if args.skip_parity else parity.run(device, args.dry_run)
    if args.dry_run:
        notes.append(
            "dry run: no bfloat16 parity (Triton's interpreter computes bfloat16 wrongly), no "
            "NaN poisoning (CUDA's caching allocator only), no torch.compile; each time is one "
            "call's on the host clock"
        )
    elif any(r.get("poisoned") is False for r in parity_rows):
        notes.append("the NaN poisoning did not show in a fresh allocation for some cases")
    copy = timing.copy_bandwidth(device, args.dry_run)
    moved = copy["bytes"] / 2**30
    print(f"copy   {copy['gbps']:.0f} GB/s (device-to-device, {moved:.2f} GiB moved)", flush=True)
    rows = timing.run(device, args.dry_run, deadline, copy)
    rows += thirdparty.run(device, args.dry_run, deadline)
    if modelled is None:
        model_result = {"note": skipped_model}
    else:
        model_result = estimates.merge(
            modelled.result(timeout=deadline + 60 - time.perf_counter()),
            modelled_loss.result(timeout=deadline + 60 - time.perf_counter()),
        )
    estimates.attach(rows, model_result)

    result = {
        "environment": env,
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "elapsed_s": time.perf_counter() - start,
        "parity": parity_rows,
        "copy": copy,
        "timings": rows,
        "model": model_result,
        "notes": notes,
    }
    out_dir = Path(args.out) if args.out else None
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="psp-gpu-check-")) if args.dry_run else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(env["gpu"])
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=1, default=str))
    md_path.write_text(output.render(result))
    failed = [r for r in parity_rows if not r["ok"]]
    wrong = [r for r in rows if r.get("check_ok") is False or "error" in r]
    print(output.render(result))
    print(f"wrote {json_path} and {md_path} in {result['elapsed_s']:.0f} s")
    if failed or wrong:
        print(f"{len(failed)} parity failures, {len(wrong)} timing entries wrong or failed")
        return 1
    return 0
