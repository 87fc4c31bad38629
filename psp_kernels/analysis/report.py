"""The workload report: every launch of a workload, its machine code, its modelled time, findings.

:func:`build` records the workloads' launches (:mod:`.workloads`), compiles every distinct
specialization once per architecture (:mod:`.machine`, in parallel), models each launch on the
GPUs of its architecture (:mod:`.cost`: sm_80 -> A100, sm_90 -> H100 and H200) and checks it.

A finding is any of:

* a compile error, a register spill, or shared memory over the architecture's limit;
* a global access of 4 bytes or fewer to a big tensor (1 MiB or more, and 10% or more of the
  bytes its launch moves: not a tiny branch or table) that is contiguous along
  some dimension with every row 16-byte aligned (a 16-byte access would fit; rows of an odd
  multiple of 4 bytes, as NCHW 90x90 16-bit, admit no aligned 16-byte vector), traced to that
  tensor through the PTX;
* a kernel with ``tl.dot`` whose SASS has no tensor-core instruction (HGMMA / HMMA);
* a heavy launch (10% or more of the workload's bytes) under one wave at batch 8 or more, or at
  any batch where its launcher sizes the grid to fill the GPU (row splits);
* atomics (``RED`` / ``ATOM``): results must stay bitwise deterministic.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import inspect

from . import cost, machine
from .workloads import Shape, ideal_bytes, record_workload

#: The architectures compiled, and the GPUs modelled on each.
ARCH_GPUS = {80: ("A100",), 90: ("H100", "H200")}
BIG_TENSOR = 1 << 20
BIG_SHARE = 0.10  # ... and 10% or more of the bytes its launch moves
HEAVY_SHARE = 0.10
_OPS = ("pyramid_pool_conv", "upsample_concat", "shifted_upsample_add", "upsample_cross_entropy")


def _traffic_models() -> dict:
    models = {}
    for op in _OPS:
        models.update(importlib.import_module(f"psp_kernels.ops.{op}.configs").TRAFFIC)
    return models


@dataclasses.dataclass
class Row:
    """One launch on one architecture."""

    workload: str
    shape: Shape
    step: str
    kernel: str
    arch: int
    grid: tuple
    programs: int
    machine: dict
    traffic: object
    model: dict  # gpu name -> cost.launch_time(...)
    findings: list[str]


@dataclasses.dataclass
class Report:
    rows: list[Row]
    totals: list[dict]  # one per (workload, shape, gpu): modelled and ideal microseconds

    @property
    def findings(self) -> list[str]:
        return [f"{r.workload} {r.shape.label()} {r.kernel} sm_{r.arch}: {f}" for r in self.rows
                for f in r.findings]  # fmt: skip


def _uses_dot(kernel) -> bool:
    return "tl.dot(" in inspect.getsource(kernel.fn)


def _access_findings(launch, m: dict, moved: int) -> list[str]:
    found = []
    for name, arg in launch.args.items():
        if not hasattr(arg, "contiguous_run"):
            continue
        if arg.nbytes < BIG_TENSOR or arg.nbytes < BIG_SHARE * moved:
            continue  # small, or a small part of what the launch moves (a tiny branch, a table)
        widest = arg.widest_vector()
        if widest < 16:
            continue  # no aligned 16-byte vector fits (short or misaligned rows)
        narrow = sorted({a["width"] for a in machine.accesses_of(m, name) if a["width"] <= 4})
        if narrow:
            widths = "/".join(f"{w}" for w in narrow)
            found.append(f"{widths}-byte accesses to {name} ({arg.nbytes / 2**20:.1f} MiB)")
    return found


def uses_atomics(sass: dict) -> bool:
    """Whether machine code with these SASS counts (:func:`.machine.sass_counts`) has global
    atomics or reductions: a kernel with them is not bitwise deterministic across runs."""
    return any(sass.get(op) for op in ("RED", "ATOM", "REDG", "ATOMG"))


def _check(launch, m: dict, traffic, model: dict, shape: Shape, heavy: bool) -> list[str]:
    if "error" in m:
        return [f"does not compile: {m['error']}"]
    found = []
    if m["spill_stores"] or m["spill_loads"]:
        found.append(f"spills ({m['spill_stores']} B stores / {m['spill_loads']} B loads)")
    if m["shared"] > machine.SHARED_LIMIT[m["arch"]]:
        found.append(f"shared memory {m['shared']} B over the limit")
    found += _access_findings(launch, m, traffic.moved)
    sass = m["sass"]
    if _uses_dot(launch.kernel) and not (sass.get("HGMMA") or sass.get("HMMA")):
        found.append(f"tl.dot without tensor-core instructions ({sass.get('FFMA', 0)} FFMA)")
    if uses_atomics(sass):
        found.append("atomics")
    waves = min(t["waves"] for t in model.values())
    if heavy and waves < 1 and (shape.n >= 8 or traffic.fills_gpu):
        found.append(f"heavy launch under one wave ({waves:.2f} waves, {launch.programs} programs)")
    return found


def _analyse_all(sources: dict, jobs: int) -> dict:
    keys = list(sources)
    if jobs > 1 and len(keys) > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(machine.analyse, [sources[k] for k in keys]))
    else:
        results = [machine.analyse(sources[k]) for k in keys]
    return {k: dict(r, arch=sources[k]["arch"]) for k, r in zip(keys, results)}


def build(workloads, shapes, archs=(80, 90), jobs: int = 2, cases=None) -> Report:
    """The report of ``workloads`` x ``shapes`` (or of the ``(workload, shape)`` pairs
    ``cases``) compiled for ``archs``."""
    models = _traffic_models()
    recorded = []  # (workload, shape, arch, launch, source key)
    sources = {}
    if cases is None:
        cases = [(w, s) for w in workloads for s in shapes]
    for workload, shape in cases:
        for arch in archs:
            sms = cost.GPUS[ARCH_GPUS[arch][0]].sms
            for launch in record_workload(workload, shape, sms, arch):
                src = machine.jit_source(launch, arch)
                key = machine.source_key(src)
                sources.setdefault(key, src)
                recorded.append((workload, shape, arch, launch, key))
    analysed = _analyse_all(sources, jobs)

    rows, totals = [], []
    groups: dict = {}
    for workload, shape, arch, launch, key in recorded:
        groups.setdefault((workload, shape, arch), []).append((launch, analysed[key]))
    for (workload, shape, arch), launches in groups.items():
        traffics = [models[launch.name](launch) for launch, _ in launches]
        total_moved = sum(t.moved for t in traffics)
        gpu_totals = {g: 0.0 for g in ARCH_GPUS[arch]}
        for (launch, m), traffic in zip(launches, traffics):
            model = {}
            if "error" not in m:
                for g in ARCH_GPUS[arch]:
                    model[g] = cost.launch_time(traffic, m, launch.programs, cost.GPUS[g])
                    gpu_totals[g] += model[g]["us"]
            heavy = traffic.moved >= HEAVY_SHARE * total_moved
            findings = (
                _check(launch, m, traffic, model, shape, heavy)
                if model
                else [f"does not compile: {m['error']}"]
            )
            rows.append(Row(workload, shape, launch.step, launch.name, arch, launch.grid,
                            launch.programs, m, traffic, model, findings))  # fmt: skip
        ideal = ideal_bytes(workload, shape)
        for g, us in gpu_totals.items():
            ideal_us = cost.ideal_us(ideal, cost.GPUS[g])
            totals.append(dict(workload=workload, shape=shape.label(), gpu=g, modelled_us=us,
                               ideal_us=ideal_us, ratio=us / ideal_us, ideal_bytes=ideal,
                               moved_bytes=total_moved))  # fmt: skip
    return Report(rows, totals)


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def _widths(sass: dict, kinds) -> str:
    parts = []
    for kind in kinds:
        for width in (16, 8, 4, 2, 1):
            count = sass.get(f"{kind}.{width}", 0)
            if count:
                parts.append(f"{'A' if kind == 'LDGSTS' else ''}{width}x{count}")
    return " ".join(parts) or "-"


def format_rows(rows: list[Row]) -> str:
    header = ("workload", "shape", "kernel", "arch", "grid", "waves", "regs", "spill",
              "smem", "occ", "loads B x n", "stores B x n", "TC", "MB moved/ideal",
              "model us (bound)", "findings")  # fmt: skip
    lines = []
    for r in rows:
        m = r.machine
        if "error" in m:
            lines.append((r.workload, r.shape.label(), r.kernel, f"sm_{r.arch}", str(r.grid),
                          *("-",) * 10, "; ".join(r.findings)))  # fmt: skip
            continue
        sass = m["sass"]
        tc = sass.get("HGMMA", 0) + sass.get("HMMA", 0)
        model = "  ".join(f"{g} {t['us']:.1f} ({t['bound'][:3]})" for g, t in r.model.items())
        waves = min(t["waves"] for t in r.model.values())
        lines.append((
            r.workload, r.shape.label(), r.kernel, f"sm_{r.arch}",
            "x".join(str(g) for g in r.grid if g > 1) or "1", f"{waves:.2f}",
            str(m["registers"]), f"{m['spill_stores']}/{m['spill_loads']}", str(m["shared"]),
            str(m["occupancy"]), _widths(sass, ("LDG", "LDGSTS")), _widths(sass, ("STG",)),
            str(tc), f"{r.traffic.moved / 1e6:.1f}/{r.traffic.ideal / 1e6:.1f}", model,
            "; ".join(r.findings) or "ok",
        ))  # fmt: skip
    return _table(header, lines)


def format_totals(totals: list[dict]) -> str:
    header = ("workload", "shape", "gpu", "modelled us", "ideal us", "x ideal", "of roofline")
    lines = [
        (t["workload"], t["shape"], t["gpu"], f"{t['modelled_us']:.1f}", f"{t['ideal_us']:.1f}",
         f"{t['ratio']:.2f}", f"{100 / t['ratio']:.0f}%")
        for t in totals
    ]  # fmt: skip
    return _table(header, lines)


def _table(header, lines) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out.extend(fmt.format(*line) for line in lines)
    return "\n".join(out)
