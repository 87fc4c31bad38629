"""The targets a benchmark run is judged by: ``pass``, ``MISS`` or ``not run`` for each.

* the PPM at N=8, C=2048, 60x60, R=512, bf16 on an H100/H200 (:data:`TARGETS`);
* the PSPNet-50 training step at N=8 on a GPU, faster than eager and compile;
* the concat-free head (:data:`CMP_TARGETS`).

The rows are :func:`benchmarks.summary.speedups`'s (records plus speed-up ratios).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CMP_TARGETS", "HEADLINE", "TARGETS", "cmp_target_checks", "target_checks"]

COMPILED_PROVIDERS = ("compiled", "compiled-max-autotune")
FUSED_PROVIDERS = ("fused", "fused-compiled")

# The headline configuration the targets refer to (PPM on H100/H200, bf16).
HEADLINE = {"n": 8, "c": 2048, "h": 60, "w": 60, "r": 512, "dtype": "bfloat16"}
# Concat-free head targets: PSPNet-50 1x3x473x473 CPU forward, FLOPs at 473,
# training peak memory at N=8 473 on a GPU.
CMP_TARGETS = {"cpu_fwd_speedup": 1.15, "flops_ratio": 0.80, "train_mem_ratio": 0.90}
TARGETS = {
    "ppm fwd": {"vs_eager": 3.0, "vs_compiled": 1.5, "pct_peak": 80.0},
    "ppm fwd+bwd": {"vs_eager": 2.0, "vs_compiled": 1.3, "memory_le_eager": True},
    "train step": {"vs_eager": 1.0, "vs_compiled": 1.0},
}


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _pct(ratio) -> str:
    return "-" if ratio is None else f"{100 * (ratio - 1):+.0f}%"


def cmp_target_checks(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """``(target, status, detail)`` for the concat-free head (rows from :func:`speedups`).

    * PSPNet-50 1x3x473x473 eval forward on CPU: ``concat_free`` >= 1.15x faster than ``concat``;
    * FLOPs of that forward (any device): ``concat_free`` <= 0.80 x ``concat`` (-20%);
    * training (``modelcmp fwd+bwd``) at N=8 473 on a GPU: peak memory <= 0.90 x ``concat``.
    """
    t = CMP_TARGETS
    free = [r for r in rows if r["case"] == "modelcmp" and r["provider"] == "concat_free"]
    free = [r for r in free if r.get("crop") == 473]
    checks = []
    cpu = [r for r in free if r["pass"] == "fwd" and r.get("device") == "cpu" and r["n"] == 1]
    cpu = [r for r in cpu if r.get("vs_concat") is not None]
    name = "PSPNet-50 1x3x473x473 CPU forward, concat_free vs concat"
    if not cpu:
        checks.append((name, "not run", "needs modelcmp fwd N1 473 on CPU (--bench-cpu-model)"))
    for r in cpu:
        ok = r["vs_concat"] >= t["cpu_fwd_speedup"]
        detail = (
            f"{r['vs_concat']:.2f}x (target >= {t['cpu_fwd_speedup']:g}x) on {r['device_name']}"
        )
        checks.append((name, "pass" if ok else "MISS", detail))
    fl = [r for r in free if r["pass"] == "fwd" and r.get("flops_vs_concat") is not None]
    name = "PSPNet-50 473 forward FLOPs, concat_free vs concat"
    if not fl:
        checks.append((name, "not run", "needs modelcmp fwd at 473"))
    else:
        r = fl[0]
        ok = r["flops_vs_concat"] <= t["flops_ratio"]
        detail = (
            f"{_pct(r['flops_vs_concat'])} ({r['flops'] / 1e9:.0f} vs "
            f"{r['flops'] / r['flops_vs_concat'] / 1e9:.0f} GFLOP at N{r['n']}; target <= "
            f"{_pct(t['flops_ratio'])})"
        )
        checks.append((name, "pass" if ok else "MISS", detail))
    mem = [r for r in free if r["pass"] == "fwd+bwd" and r.get("device") == "cuda" and r["n"] == 8]
    mem = [r for r in mem if r.get("peak_mem_bytes_vs_concat") is not None]
    name = "PSPNet-50 N8 473 training peak memory (GPU), concat_free vs concat"
    if not mem:
        checks.append((name, "not run", "needs modelcmp fwd+bwd N8 473 on a GPU"))
    for r in mem:
        ok = r["peak_mem_bytes_vs_concat"] <= t["train_mem_ratio"]
        detail = (
            f"{_pct(r['peak_mem_bytes_vs_concat'])} ({r['dtype']}; target <= "
            f"{_pct(t['train_mem_ratio'])}) on {r['device_name']}"
        )
        checks.append((name, "pass" if ok else "MISS", detail))
    return checks


def _is_headline(r: dict) -> bool:
    return r.get("device") == "cuda" and all(r.get(k) == v for k, v in HEADLINE.items())


def target_checks(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """``(target, status, detail)`` for each target; status ``pass``, ``MISS`` or ``not run``.

    The targets are stated for the PPM at N=8, C=2048, 60x60, R=512, bf16 on an H100/H200 and for
    the PSPNet-50 training step at N=8 on a GPU. The fused side of the training step is the faster
    of ``fused`` and ``fused-compiled``.
    """
    checks: list[tuple[str, str, str]] = []

    def ratio_check(name, r, field, bound, what):
        value = r.get(field) if r else None
        if value is None:
            checks.append((name, "not run", f"needs {what}"))
        else:
            status = "pass" if value >= bound else "MISS"
            detail = f"{value:.2f}x (target >= {bound:g}x) on {r['device_name']}"
            checks.append((name, status, detail))

    for pass_ in ("fwd", "fwd+bwd"):
        target = TARGETS[f"ppm {pass_}"]
        pool = [r for r in rows if r["case"] == "ppm" and r["pass"] == pass_ and _is_headline(r)]
        fused = next((r for r in pool if r["provider"] == "fused"), None)
        eager = next((r for r in pool if r["provider"] == "eager"), None)
        what = f"ppm {pass_} fused + eager/compiled at N8 C2048 60x60 R512 bf16 on a GPU"
        ratio_check(f"ppm {pass_} vs eager", fused, "vs_eager", target["vs_eager"], what)
        bound = target["vs_compiled"]
        ratio_check(f"ppm {pass_} vs best compile", fused, "vs_compiled", bound, what)
        if "pct_peak" in target:
            pct = fused.get("pct_peak") if fused else None
            if pct is None:
                checks.append((f"ppm {pass_} bandwidth", "not run", f"needs {what} (known GPU)"))
            else:
                status = "pass" if pct >= target["pct_peak"] else "MISS"
                checks.append(
                    (
                        f"ppm {pass_} bandwidth",
                        status,
                        f"{pct:.0f}% of {fused['peak_gbps']:.0f} GB/s "
                        f"(target >= {target['pct_peak']:g}%) on {fused['device_name']}",
                    )
                )
        if target.get("memory_le_eager"):
            fm = fused.get("peak_mem_bytes") if fused else None
            em = eager.get("peak_mem_bytes") if eager else None
            if fm is None or em is None:
                checks.append((f"ppm {pass_} peak memory", "not run", f"needs {what}"))
            else:
                status = "pass" if fm <= em else "MISS"
                checks.append(
                    (
                        f"ppm {pass_} peak memory",
                        status,
                        f"fused {_mib(fm)} MiB vs eager {_mib(em)} MiB (target <= eager)",
                    )
                )

    train = [r for r in rows if r["case"] == "train" and r.get("device") == "cuda" and r["n"] == 8]
    configs = sorted({r["config"] for r in train})
    if not configs:
        checks.append(("train step vs eager and compile", "not run", "needs N8 steps on a GPU"))
    for config in configs:
        pool = [r for r in train if r["config"] == config and r.get("time_s")]
        fused = [r for r in pool if r["provider"] in FUSED_PROVIDERS]
        others = {
            "eager": [r for r in pool if r["provider"] == "eager"],
            "compile": [r for r in pool if r["provider"] in COMPILED_PROVIDERS],
        }
        for what, base in others.items():
            name = f"train step {config} vs {what}"
            if not fused or not base:
                checks.append((name, "not run", "needs fused and " + what))
                continue
            best_f = min(fused, key=lambda r: r["time_s"])
            best_b = min(base, key=lambda r: r["time_s"])
            ratio = best_b["time_s"] / best_f["time_s"]
            status = "pass" if ratio > 1.0 else "MISS"
            checks.append(
                (
                    name,
                    status,
                    f"{best_f['provider']} {ratio:.2f}x faster than {best_b['provider']} "
                    "(target > 1x)",
                )
            )
    return checks
