"""The Markdown summary of a ``gpu_check`` run (the JSON holds everything)."""

from __future__ import annotations


def _f(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _gbps(value) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _parity(rows: list[dict]) -> list[str]:
    ok = sum(r["ok"] for r in rows)
    poisoned = {r.get("poisoned") for r in rows if "poisoned" in r}
    how = "yes" if poisoned == {True} else "no (CPU)" if poisoned == {False} else "partly"
    lines = ["## Parity against float64 on the CPU", ""]
    lines.append(
        f"{ok} of {len(rows)} cases pass (forward and backward, every element finite and within "
        "the contract's tolerance, relative to the reference's max abs). Outputs NaN-poisoned "
        f"before each run: {how}."
    )
    lines += ["", "| op | size | dtype | status | max rel err | tol | worst | tensors |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        status = "ok" if r["ok"] else "FAIL"
        if "error" in r:
            lines.append(f"| {r['op']} | {r['size']} | {r['dtype']} | {status} | {r['error']} |||")
            continue
        lines.append(
            f"| {r['op']} | {r['size']} | {r['dtype']} | {status} | {r['max_rel_err']:.2e} "
            f"| {r['tol']:g} | {r['worst']} | {r['tensors']} |"
        )
    return lines


def _timings(rows: list[dict], copy: dict) -> list[str]:
    lines = ["", "## Timings", ""]
    lines.append(
        f"Median of `triton.testing.do_bench` (CUDA events, L2 cleared before every call). "
        f"GB/s: ideal bytes / time; % copy: of a device-to-device copy measured in this run "
        f"({_gbps(copy['gbps'])} GB/s). x base: the baseline's time (first provider) over this "
        f"one's; x compiled: `compiled`'s over this one's. modelled: the cost model's estimate "
        f"(psp_kernels.analysis; an estimate, not a measurement)."
    )
    lines += ["", "| case | pass | config | provider | time (ms) | x base | x compiled | GB/s "
              "| % copy | modelled (us) | peak mem (MiB) | max rel err | first call (s) |",
              "|" + "---|" * 13]  # fmt: skip
    for r in rows:
        head = f"| {r['case']} | {r['pass']} | {r['config']} | {r['provider']} "
        if "skipped" in r or "error" in r:
            lines.append(head + f"| {r.get('skipped') or r['error']} |" + " |" * 8)
            continue
        err = _f(r.get("max_rel_err"), ".1e") + ("" if r.get("check_ok") is not False else " FAIL")
        mem = r.get("peak_mem_bytes")
        lines.append(
            head + f"| {r['time_s'] * 1e3:.3f} | {_f(r.get('vs_baseline'), '.2f')} "
            f"| {_f(r.get('vs_compiled'), '.2f')} | {_gbps(r.get('gbps'))} "
            f"| {_f(r.get('pct_of_copy'), '.0f')} | {_f(r.get('modelled_us'), '.0f')} "
            f"| {_f(mem and mem / 2**20, '.0f')} | {err} | {r['first_call_s']:.1f} |"
        )
    return lines


def render(result: dict) -> str:
    env = result["environment"]
    lines = [f"# gpu_check: {env['gpu']} ({env['date']})", ""]
    lines.append(
        f"torch {env['torch']}, triton {env['triton']}, Python {env['python']}"
        + (", dry run on CPU through Triton's interpreter" if result["dry_run"] else "")
        + f"; {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget."
    )
    lines += [""] + _parity(result["parity"]) + _timings(result["timings"], result["copy"])
    model = result["model"]
    lines += ["", "## Cost model", ""]
    if "note" in model:
        lines.append(model["note"])
    if "totals" in model:
        lines.append(f"Modelled on {model['gpu']} ({model['findings']} findings in the report):")
        lines += ["", "| workload | modelled (us) | ideal (us) |", "|---|---|---|"]
        for name, t in model["totals"].items():
            lines.append(f"| {name} | {t['modelled_us']:.0f} | {t['ideal_us']:.0f} |")
    for note in result["notes"]:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"
