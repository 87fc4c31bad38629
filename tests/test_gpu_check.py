"""``python -m benchmarks.gpu_check``: the ``--dry-run`` (the GPU check's code path on CPU through
Triton's interpreter, tiny shapes) passes and writes complete results; its parity part never asks
float64 of ``backend="triton"``, and catches an unwritten (NaN) element; the cost model's JSON is
read and put beside the right measurements."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import psp_kernels
from benchmarks.gpu_check import estimates, parity, timing
from psp_kernels import interpreting

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc, out


def test_dry_run_passes_and_writes_results(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (json_path,) = out.glob("cpu-dry-run_*.json")
    (md_path,) = out.glob("cpu-dry-run_*.md")
    result = json.loads(json_path.read_text())
    assert result["dry_run"] and result["environment"]["interpreter"]
    # parity: every op x size x dtype, forward and backward, every tensor finite and in tolerance
    rows = result["parity"]
    keys = {(r["op"], r["size"], r["dtype"]) for r in rows}
    sizes = [s.label for s in parity.DRY_SIZES]
    assert keys == {(o, s, d) for o in parity.OPS for s in sizes for d in ("fp32", "fp16")}
    for r in rows:
        assert r["ok"] and not r["failed"], r
        assert r["max_rel_err"] <= r["tol"]
    n_out = {"pyramid_pool_conv": 4, "pyramid_pooling": 1, "upsample_concat": 1}
    for r in rows:  # outputs + one gradient per input
        n_in = {"pyramid_pool_conv": 13, "pyramid_pooling": 13, "upsample_cross_entropy": 1}.get(
            r["op"], 5
        )
        assert r["tensors"] == n_out.get(r["op"], 1) + n_in, r
    # timings: every entry of the plan, measured or skipped with a reason; checked against
    # the baseline where measured
    timings = [r for r in result["timings"] if r["case"] != "mmseg-psphead"]
    # mmseg's PSPHead: eager, compiled (not in a dry run) and converted, or all skipped (no mmseg)
    mmseg = [r for r in result["timings"] if r["case"] == "mmseg-psphead"]
    assert [r["provider"] for r in mmseg] == ["eager", "compiled", "converted"]
    if "time_s" in mmseg[2]:
        assert mmseg[2]["check_ok"] and mmseg[2]["max_rel_err"] < 1e-4, mmseg[2]
    else:
        assert all("mmsegmentation" in r["skipped"] for r in mmseg), mmseg
    plan = [(c, p, prov) for c, p, provs, *_ in timing.PLAN for prov in provs]
    assert [(r["case"], r["pass"], r["provider"]) for r in timings] == plan
    measured = [r for r in timings if "time_s" in r]
    assert {(r["case"], r["provider"]) for r in measured} >= {
        ("ppm", "fused"), ("kernel1", "fused"), ("kernel2", "fused"), ("head", "fused"),
        ("headcmp", "concat_free"), ("train", "eager"), ("loss", "fused"),
    }  # fmt: skip
    for r in measured:
        assert r["time_s"] > 0 and "error" not in r, r
        if r["provider"] != r["baseline"]:
            assert r["check_ok"] and r["max_rel_err"] < 1e-4, r
    for r in timings:
        assert "time_s" in r or r["skipped"], r
    assert result["copy"]["gbps"] > 0
    assert any(r.get("pct_of_copy") for r in measured)
    text = md_path.read_text()
    assert "## Parity against float64 on the CPU" in text and "## Timings" in text
    assert f"{len(rows)} of {len(rows)} cases pass" in text


def test_parity_never_asks_float64_of_the_kernels(monkeypatch):
    """Every call with backend="triton" gets float32/16/bf16 tensors: float64 is the
    reference's, on the CPU (CUDA refuses it)."""
    seen = []
    for name in parity.OPS:
        real = getattr(psp_kernels, name)

        def spy(*args, _real=real, **kwargs):
            flat = [*args, *kwargs.values()]
            flat += [t for a in flat if isinstance(a, (list, tuple)) for t in a]
            seen.append((kwargs.get("backend"), {t.dtype for t in flat if torch.is_tensor(t)}))
            return _real(*args, **kwargs)

        monkeypatch.setattr(psp_kernels, name, spy)
    assert set(parity.DTYPES.values()) == {torch.float32, torch.float16, torch.bfloat16}
    if not interpreting():
        pytest.skip("the kernels run on CPU through TRITON_INTERPRET=1 only")
    for op in parity.OPS:
        row = parity.check_one(op, parity.DRY_SIZES[0], "fp32", torch.device("cpu"), seed=1)
        assert row["ok"], row
    assert len(seen) == len(parity.OPS)
    for backend, dtypes in seen:  # (the loss's labels are int64)
        assert backend == "triton" and dtypes - {torch.int64} == {torch.float32}


def test_check_catches_an_unwritten_element():
    want = torch.randn(3, 4, dtype=torch.float64)
    got = want.float()
    assert parity._check("out", got, want, torch.float32)["ok"]
    got[1, 2] = float("nan")  # what an element left in poisoned memory looks like
    check = parity._check("out", got, want, torch.float32)
    assert not check["ok"] and not check["finite"]
    assert not parity.poison(torch.device("cpu"))  # poisoning is the CUDA allocator's


def test_model_totals_beside_the_measurements():
    report = {
        "totals": [
            {"workload": "ppm", "gpu": "H100", "modelled_us": 250.0, "ideal_us": 108.0},
            {"workload": "ppm", "gpu": "H200", "modelled_us": 200.0, "ideal_us": 75.0},
            {"workload": "ppm-train", "gpu": "H200", "modelled_us": 900.0, "ideal_us": 300.0},
            {"workload": "head", "gpu": "H200", "modelled_us": 120.0, "ideal_us": 40.0},
        ],
        "findings": ["a", "b"],
    }
    got = estimates.read_totals(report, "H200")
    assert got["findings"] == 2 and set(got["totals"]) == {"ppm", "ppm-train", "head"}
    rows = [
        {"case": "ppm", "pass": "fwd", "provider": "fused", "time_s": 400e-6, "config": "a"},
        {"case": "ppm", "pass": "fwd", "provider": "eager", "time_s": 1e-3, "config": "a"},
        {
            "case": "headcmp",
            "pass": "fwd+bwd",
            "provider": "concat_free",
            "time_s": None,
            "config": "a",
        },
    ]
    estimates.attach(rows, got)
    assert rows[0]["modelled_us"] == 200.0 and rows[0]["measured_over_modelled"] == 2.0
    assert "modelled_us" not in rows[1]
    assert rows[2]["modelled_us"] == 120.0 and "measured_over_modelled" not in rows[2]
    # the loss, from its own run at its shape: beside the measurement of that shape only
    loss = {"totals": [{"workload": "loss", "gpu": "H200", "modelled_us": 300.0, "ideal_us": 35}]}
    both = estimates.merge(got, estimates.read_totals(loss, "H200", "N16 K150 bf16"))
    assert set(both["totals"]) == {"ppm", "ppm-train", "head", "loss"}
    rows = [{"case": "loss", "pass": "fwd+bwd", "provider": "fused", "config": c, "time_s": 6e-4}
            for c in ("N16 K150 bf16", "N16 K150 fp32")]  # fmt: skip
    estimates.attach(rows, both)
    assert rows[0]["measured_over_modelled"] == 2.0 and "modelled_us" not in rows[1]
    partial = estimates.merge({"note": "timed out"}, both)
    assert partial["note"] == "timed out" and "loss" in partial["totals"]
    assert estimates.model_gpu("NVIDIA H200", (9, 0)) == ("H200", 90)
    assert estimates.model_gpu("NVIDIA H100 80GB HBM3", (9, 0)) == ("H100", 90)
    assert estimates.model_gpu("NVIDIA A100-SXM4-80GB", (8, 0)) == ("A100", 80)
    assert estimates.model_gpu("NVIDIA L40S", (8, 9)) == ("A100", 80)
