"""Compile every Triton kernel configuration ahead of time for real GPUs, without a GPU.

Usage::

    python -m psp_kernels.compile_check [--arch 80 90] [--jobs N] [--module OP ...]
    python -m psp_kernels.compile_check --workload {ppm,ppm-train,head,all} [--n 8] [--c 2048]
        [--hw 60 60] [--dtype bf16 fp16 fp32] [--layout nchw nhwc] [--ci] [--warn-only]

Generic mode (the default):
every op package's ``psp_kernels.ops.<op>.configs.aot_specs()`` lists the (kernel, block sizes, warps,
stages, dtype) configurations its launcher can pick. Each one is compiled with
``triton.compile`` for sm_80 (A100) and sm_90 (H100), and the ``ptxas`` shipped with Triton reports
its registers, spills and shared memory. This catches what Triton's CPU interpreter lets through
(``tl.dot`` with a dimension below 16, type errors, register spills, too much shared memory).

Prints one table row per (kernel configuration, architecture); exits with status 1 when any
configuration fails to compile (spills and shared memory over the target's are printed for these
generic builds against sm_80: 163 KB, sm_90: 227 KB opt-in per block; the specialized builds that
really run are gated by ``--workload``), 0 otherwise.

Workload mode (``--workload``): the launches a workload really makes (``psp_kernels.analysis``:
recorded on meta tensors, compiled with the JIT's specialization), with grid, waves, registers,
spills, shared memory, occupancy, the widths of the global loads and stores from the SASS,
tensor-core instructions, the bytes each moves against the ideal and the cost model's time on
A100 / H100 / H200; exits 1 on any finding (``psp_kernels.analysis.report``) unless
``--warn-only``.

The interpreter replaces ``@triton.jit`` functions when ``TRITON_INTERPRET=1`` is set at import
time, so under that setting this module re-runs itself in a subprocess without it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
import time

from .analysis import cli as workload_cli
from .analysis.machine import SHARED_LIMIT

DEFAULT_ARCHS = (80, 90)


def _interpret_env_set() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _rerun_without_interpreter(argv: list[str]) -> int:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "psp_kernels.compile_check", *argv]
    return subprocess.call(cmd, env=env)


def collect_specs(modules=None):
    """Return ``[(op_name, AotSpec)]`` for every op package of ``psp_kernels.ops``.

    Each op's ``configs.aot_specs()`` lists its GPU configurations. ``modules``: restrict to
    these op names (default: every op).
    """
    import psp_kernels.ops

    found = []
    for info in sorted(pkgutil.iter_modules(psp_kernels.ops.__path__), key=lambda i: i.name):
        if not info.ispkg or (modules and info.name not in modules):
            continue
        name = f"psp_kernels.ops.{info.name}.configs"
        if importlib.util.find_spec(name) is None:  # no kernels of its own (pyramid_pooling)
            continue
        found.extend((info.name, spec) for spec in importlib.import_module(name).aot_specs())
    return found


def _ptxas_usage(ptx: str, arch: int) -> dict:
    """``machine.ptxas_usage``, cached by the PTX's hash next to Triton's own cache."""
    from .analysis.machine import disk_cached, ptxas_usage

    return disk_cached("psp_kernels_ptxas", f"{arch}\n{ptx}", lambda: ptxas_usage(ptx, arch))


def _full_signature(spec) -> dict:
    """Every kernel argument's type: ``"constexpr"`` for the constexprs, the spec's for the rest."""
    sig = {}
    for name in spec.kernel.arg_names:
        if name in spec.constexprs:
            sig[name] = "constexpr"
        elif name in spec.signature:
            sig[name] = spec.signature[name]
        else:
            raise ValueError(f"{spec.name}: argument {name!r} has no type in the spec's signature")
    return sig


def compile_one(spec, arch: int) -> dict:
    """Compile one spec for one architecture and return its resource usage (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget

    row = {"kernel": spec.kernel.__name__, "config": spec.name, "arch": f"sm_{arch}"}
    start = time.perf_counter()
    try:
        signature = _full_signature(spec)
        # like Triton's JIT for 16-byte aligned tensors (every fresh torch allocation): pointer
        # arguments are known to be divisible by 16. Integer arguments get no such hint, and no
        # stride is specialized to 1, so the check sees the generic-strides build: the worst case
        # for address registers (the JIT's contiguous builds vectorize and need fewer).
        attrs = {
            (i,): [["tt.divisibility", 16]]
            for i, name in enumerate(spec.kernel.arg_names)
            if signature[name].startswith("*")
        }
        src = triton.compiler.ASTSource(
            fn=spec.kernel, signature=signature, constexprs=dict(spec.constexprs), attrs=attrs
        )
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
        usage = _ptxas_usage(compiled.asm["ptx"], arch)
        row.update(usage)
        # Triton's shared memory is dynamic (metadata); ptxas reports only the static part
        row["shared"] = max(int(compiled.metadata.shared), usage["static_smem"])
        problems = []
        if usage["spill_stores"] or usage["spill_loads"]:
            problems.append("register spills")
        if row["shared"] > SHARED_LIMIT[arch]:
            problems.append(f"shared memory {row['shared']} B > {SHARED_LIMIT[arch]} B")
        row["error"], row["warning"] = "", "; ".join(problems)
    except Exception as exc:  # report every failing configuration, not only the first
        row["error"] = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        )
    row["seconds"] = time.perf_counter() - start
    return row


def _compile_task(args):
    module_name, index, arch = args
    module = importlib.import_module(f"psp_kernels.ops.{module_name}.configs")
    spec = module.aot_specs()[index]
    row = compile_one(spec, arch)
    row["module"] = module_name
    return row


def format_table(rows) -> str:
    header = ("kernel", "config", "arch", "regs", "spill st/ld", "shared B", "status")
    lines = []
    for r in rows:
        if "registers" in r:
            spill = f"{r['spill_stores']}/{r['spill_loads']}"
            regs, shared = str(r["registers"]), str(r["shared"])
        else:
            spill = regs = shared = "-"
        status = r["error"] or (f"ok (generic build: {r['warning']})" if r.get("warning") else "ok")
        lines.append((r["kernel"], r["config"], r["arch"], regs, spill, shared, status))
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out.extend(fmt.format(*line) for line in lines)
    return "\n".join(out)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m psp_kernels.compile_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), choices=sorted(SHARED_LIMIT)
    )
    parser.add_argument(
        "--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles"
    )
    parser.add_argument(
        "--module", nargs="+", default=None, help="only these ops (psp_kernels.ops.<op>)"
    )
    workload_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    if _interpret_env_set():
        return _rerun_without_interpreter(argv)
    if args.workload:
        return workload_cli.run(args)

    start = time.perf_counter()
    specs = collect_specs(args.module)
    modules = sorted({m for m, _ in specs})
    tasks = []
    per_module_index = {}
    for module_name, _spec in specs:
        idx = per_module_index.get(module_name, 0)
        per_module_index[module_name] = idx + 1
        tasks.extend((module_name, idx, arch) for arch in args.arch)
    if not tasks:
        print("compile_check: no aot_specs() found in psp_kernels", file=sys.stderr)
        return 1
    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(_compile_task, tasks))
    else:
        rows = [_compile_task(t) for t in tasks]
    print(format_table(rows))
    failed = [r for r in rows if r["error"]]
    warned = [r for r in rows if not r["error"] and r.get("warning")]
    print(
        f"\n{len(rows)} configurations ({len(specs)} specs x {len(args.arch)} archs) from "
        f"{', '.join(modules)}: {len(rows) - len(failed)} ok, {len(failed)} failed "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if warned:
        print(
            f"{len(warned)} generic builds (every stride a runtime value, no divisibility hint) "
            "spill or exceed shared memory; the builds that really run are checked by "
            "--workload (the CI gate)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
