"""Compile a recorded launch as Triton's JIT would, for sm_80 / sm_90, and read its machine code.

* :func:`jit_source`: the specialization Triton's JIT applies to the launch's arguments
  (integers equal to 1 become constants, integers and pointers divisible by 16 get the
  divisibility hint), computed by Triton's own binder for a CUDA target, without a GPU.
* :func:`analyse`: compile it and read ``ptxas -v`` (registers, spills, shared memory), the SASS
  (``cuobjdump -sass``: global loads / stores / ``cp.async`` by width, tensor-core
  instructions) and the PTX, where every global access is traced back to the pointer argument
  its address comes from (so a 2-byte access can be blamed on ``x`` and not on a small table).
  Results are cached on disk by the PTX's hash next to Triton's own cache.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable

#: Largest shared memory one block may opt into, per compute capability (bytes).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
#: Per-SM limits used for occupancy (A100, H100: 64 K registers, 2048 threads, 32 blocks).
SM_LIMITS = {
    80: dict(regs=65536, threads=2048, blocks=32, smem=164 * 1024),
    90: dict(regs=65536, threads=2048, blocks=32, smem=228 * 1024),
}


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def _target(arch: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


# ----------------------------------------------------------------------------------------------
# The JIT's specialization and the compile
# ----------------------------------------------------------------------------------------------


def jit_source(launch, arch: int) -> dict:
    """What Triton's JIT would compile for ``launch`` on ``arch``, as a picklable dict.

    Keys: ``module`` and ``kernel`` (where to import the ``JITFunction``), ``signature``,
    ``constexprs``, ``attrs`` (``triton.compiler.ASTSource`` arguments) and ``options``.
    """
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(_target(arch))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.constexprs(), **launch.options)
    bound, specialization, options = binder(*launch.jit_args(), **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, dict(kwargs), bound, specialization, options
    )
    return {
        "module": kernel.fn.__module__,
        "kernel": kernel.fn.__name__,
        "signature": signature,
        "constexprs": constexprs,
        "attrs": attrs,
        "options": {k: v for k, v in options.__dict__.items() if k in ("num_warps", "num_stages")},
        "arch": arch,
    }


def source_key(src: dict) -> str:
    """A stable key of a :func:`jit_source` (identical specializations compile once)."""
    parts = (src["module"], src["kernel"], src["signature"], src["constexprs"], src["attrs"])
    return repr((parts, sorted(src["options"].items()), src["arch"]))


def _compile(src: dict):
    import triton

    kernel = getattr(importlib.import_module(src["module"]), src["kernel"])
    ast = triton.compiler.ASTSource(
        fn=kernel, signature=src["signature"], constexprs=src["constexprs"], attrs=src["attrs"]
    )
    return triton.compile(ast, target=_target(src["arch"]), options=dict(src["options"]))


# ----------------------------------------------------------------------------------------------
# Reading the machine code
# ----------------------------------------------------------------------------------------------

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers, spill stores/loads and static shared memory from ``ptxas -v``."""
    target = "sm_90a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [_bin("ptxas"), f"-arch={target}", "-v", src, "-o", os.path.join(tmp, "k.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text.strip()}")
    regs, spill, smem = (p.search(text) for p in (_PTXAS_REGS, _PTXAS_SPILL, _PTXAS_SMEM))
    return {
        "registers": int(regs.group(1)) if regs else 0,
        "spill_stores": int(spill.group(1)) if spill else 0,
        "spill_loads": int(spill.group(2)) if spill else 0,
        "static_smem": int(smem.group(1)) if smem else 0,
    }


def _sass_width(op: str) -> int:
    parts = op.split(".")
    for token, width in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
        if token in parts:
            return width
    return 4


def sass_counts(cubin: bytes) -> dict:
    """Global memory instructions by kind and width, and tensor-core / FMA instruction counts."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run(
            [_bin("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout
    counts = collections.Counter()
    for line in sass.splitlines():
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", line)
        if not m:
            continue
        op = m.group(1)
        base = op.split(".")[0]
        if base in ("LDG", "STG", "LDGSTS"):
            counts[f"{base}.{_sass_width(op)}"] += 1
        elif base in ("HGMMA", "HMMA", "FFMA", "RED", "ATOM", "ATOMG", "REDG"):
            counts[base] += 1
    return dict(counts)


_PTX_MEM = re.compile(
    r"^(ld\.global|st\.global|cp\.async\.c[ag]\.shared\.global|"
    r"red\.global|atom\.global)([.\w:]*)\s+(.*);"
)
_PTX_PARAM = re.compile(r"ld\.param\.\w+\s+(%\w+),\s*\[(\w+)_param_(\d+)\]")
_PTX_REG = re.compile(r"%[a-z]+\d+")


def _ptx_width(kind: str, mods: str, operands: str) -> int:
    if kind.startswith("cp.async"):  # cp.async.cg.shared.global [dst], [src], bytes[, src bytes]
        m = re.search(r"\]\s*,\s*(0x[0-9a-fA-F]+|\d+)", operands.split("],", 1)[1])
        return int(m.group(1), 0) if m else 0
    vec = re.search(r"\.v(\d)", mods)
    bits = re.findall(r"\.(?:b|u|s|f|bf)(8|16|32|64)\b", mods)
    return (int(vec.group(1)) if vec else 1) * (int(bits[-1]) // 8 if bits else 4)


_PTX_PTR_DECL = re.compile(r"\.param \.u64 \.ptr[^,)]*?_param_(\d+)")
_NOT_ARITHMETIC = ("ld.", "st.", "cp.", "red.", "atom.", "bra", "bar", "setp", "wgmma", "mma",
                   "fence", "mbarrier", "ret", "exit", "call")  # fmt: skip


def ptx_accesses(ptx: str) -> list[dict]:
    """Every global access of the PTX: kind, width in bytes and the pointer params it uses.

    The pointer parameter of an access is found by following its address register back
    through the instructions that define it (a fixed point over all definitions, so loop-carried
    pointers work) to the ``ld.param`` of a pointer parameter. Values loaded from memory carry no
    provenance: an index read from a table does not make the table the access's tensor.
    Parameters are numbered among the kernel's runtime (non-constexpr) arguments.
    """
    pointers = {int(k) for k in _PTX_PTR_DECL.findall(ptx)}
    origin: dict[str, set[int]] = collections.defaultdict(set)
    edges: list[tuple[str, list[str]]] = []
    accesses = []
    for line in ptx.splitlines():
        code = re.sub(r"^@!?%p\d+\s+", "", line.split("//")[0].strip())
        if not code or code.startswith((".", "$", "{", "}")):
            continue
        m = _PTX_PARAM.search(code)
        if m:
            if int(m.group(3)) in pointers:
                origin[m.group(1)].add(int(m.group(3)))
            continue
        mem = _PTX_MEM.match(code)
        if mem:
            kind, mods, operands = mem.groups()
            # cp.async: [dst shared], [src global], bytes; the others: one [address]
            addr_part = operands.split("],", 1)[1] if kind.startswith("cp.async") else operands
            address = _PTX_REG.findall(re.search(r"\[([^\]]*)\]", addr_part).group(1))
            label = "cp.async" if kind.startswith("cp.async") else kind.split(".")[0]
            accesses.append(
                {"kind": label, "width": _ptx_width(kind, mods, operands), "address": address}
            )
            continue
        regs = _PTX_REG.findall(code)
        if len(regs) >= 2 and not code.startswith(_NOT_ARITHMETIC):
            edges.append((regs[0], regs[1:]))
    changed = True
    while changed:
        changed = False
        for dest, srcs in edges:
            union = set().union(*(origin.get(s, ()) for s in srcs))
            if not union <= origin[dest]:
                origin[dest] |= union
                changed = True
    for a in accesses:
        a["params"] = sorted(set().union(*(origin.get(r, ()) for r in a.pop("address"))))
    return accesses


def occupancy(registers: int, shared: int, num_warps: int, arch: int) -> int:
    """Blocks of this kernel resident per SM (registers, shared memory, threads, block limit)."""
    lim = SM_LIMITS[arch]
    per_warp = -(-max(registers, 1) * 32 // 256) * 256  # register allocation unit: 256 per warp
    by_regs = (lim["regs"] // per_warp) // num_warps
    by_smem = lim["smem"] // (shared + 1024) if shared else lim["blocks"]
    by_threads = lim["threads"] // (32 * num_warps)
    return max(0, min(by_regs, by_smem, by_threads, lim["blocks"]))


def disk_cached(folder: str, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()``, cached as JSON under ``folder`` of Triton's cache directory by the hash of
    ``key`` (a text naming everything the result depends on: the PTX and the architecture).

    A cache for results that are expensive to recompute and safe to lose: a file is written to a
    temporary name and renamed, so concurrent report processes never read half a file, and a
    cache that cannot be read or written is recomputed or skipped silently.
    """
    base = os.environ.get("TRITON_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".triton", "cache"
    )
    path = os.path.join(base, folder, hashlib.sha256(key.encode()).hexdigest() + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    result = compute()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, path)
    except OSError:
        pass
    return result


def analyse(src: dict) -> dict:
    """Compile ``src`` (a :func:`jit_source`) and read its machine code; cached by PTX hash.

    Returns ``registers``, ``spill_stores``, ``spill_loads``, ``shared``, ``occupancy``,
    ``sass`` (instruction counts), ``accesses`` (PTX global accesses with the indices of their
    pointer params in ``param_names``, the runtime arguments) and ``num_warps`` /
    ``num_stages``; or ``{"error": ...}`` when it does not compile.
    """
    names = [n for n, ty in src["signature"].items() if ty != "constexpr"]
    try:
        compiled = _compile(src)
    except Exception as exc:  # report it as a finding, not a crash of the whole report
        lines = str(exc).strip().splitlines()
        return {
            "error": f"{type(exc).__name__}: {lines[-1] if lines else ''}",
            "param_names": names,
        }
    ptx = compiled.asm["ptx"]
    arch = src["arch"]

    def read_machine_code() -> dict:
        usage = ptxas_usage(ptx, arch)
        shared = max(int(compiled.metadata.shared), usage["static_smem"])
        num_warps = int(src["options"].get("num_warps", 4))
        return dict(
            usage,
            shared=shared,
            occupancy=occupancy(usage["registers"], shared, num_warps, arch),
            sass=sass_counts(compiled.asm["cubin"]),
            accesses=ptx_accesses(ptx),
            num_warps=num_warps,
            num_stages=int(src["options"].get("num_stages", 3)),
        )

    result = disk_cached("psp_kernels_machine", f"v1\n{arch}\n{ptx}", read_machine_code)
    return dict(result, param_names=names)


def accesses_of(machine: dict, arg: str) -> list[dict]:
    """The PTX global accesses of :func:`analyse` whose address comes from pointer ``arg``."""
    names = machine.get("param_names", [])
    if arg not in names:
        return []
    index = names.index(arg)
    return [a for a in machine.get("accesses", []) if index in a["params"]]
