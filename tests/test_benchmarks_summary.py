"""Fast checks of the benchmark machinery (benchmarks/): byte counts, GPU table, report, plot.

Runs on CPU in well under a second apart from one tiny ``measure`` call; the benchmarks themselves
run with ``pytest benchmarks/``.
"""

import json

import pytest
import torch

from benchmarks import summary
from benchmarks.grids import Bench, Shape, cpu_grid, gpu_grid, skip_reason
from benchmarks.harness import Runnable, measure, peak_bandwidth_gbps
from benchmarks.ideal import ideal_bytes
from benchmarks.providers import Case
from benchmarks.run_gpu import result_stem

HEAD = {"n": 8, "c": 2048, "h": 60, "w": 60, "r": 512, "bins": [1, 2, 3, 6], "dtype": "bfloat16"}
CONFIG = "N8 C2048 60x60 R512 bf16"
GPU = "NVIDIA H100 80GB HBM3"


def _record(provider, pass_, time_s, case="ppm", mem=None, config=CONFIG, **extra):
    shape = HEAD if case != "train" else {"n": 8, "crop": 473, "dtype": "bfloat16"}
    ideal = None
    if case == "ppm":
        ideal = ideal_bytes(case, pass_, Shape(8, 2048, 60, 60, 512, "bfloat16"))
    gbps = ideal / time_s / 1e9 if ideal else None
    return {
        "case": case,
        "pass": pass_,
        "provider": provider,
        "config": config,
        "input_bytes": 8 * 2048 * 3600 * 2,
        **shape,
        "device": "cuda",
        "device_name": GPU,
        "torch": "2.13.0",
        "triton": "3.6.0",
        "time_s": time_s,
        "ideal_bytes": ideal,
        "gbps": gbps,
        "peak_gbps": 3350.0,
        "pct_peak": 100 * gbps / 3350.0 if gbps else None,
        "peak_mem_bytes": mem,
        "first_call_s": 1.0,
        **extra,
    }


def _fake_run():
    return [
        _record("eager", "fwd", 600e-6),
        _record("compiled", "fwd", 300e-6),
        _record("compiled-max-autotune", "fwd", 250e-6),
        _record("fused", "fwd", 120e-6),  # 5x eager, 2.08x best compile, 362 MB / 120 us = 90%
        _record("eager", "fwd+bwd", 2e-3, mem=900 * 2**20),
        _record("compiled", "fwd+bwd", 1.2e-3, mem=700 * 2**20),
        _record("fused", "fwd+bwd", 1.0e-3, mem=1000 * 2**20),  # 1.2x compile (MISS), more memory
        _record("eager", "step", 0.50, case="train", config="PSPNet-50 N8 473x473 bf16"),
        _record("compiled", "step", 0.40, case="train", config="PSPNet-50 N8 473x473 bf16"),
        _record("fused-compiled", "step", 0.38, case="train", config="PSPNet-50 N8 473x473 bf16"),
    ]


def _write_json(path, records):
    benchmarks = [
        {
            "name": f"t{i}",
            "fullname": f"benchmarks/x.py::t{i}",
            "stats": {"median": r["time_s"]},
            "extra_info": r,
        }
        for i, r in enumerate(records)
    ]
    benchmarks.append({"name": "other", "stats": {"median": 1.0}, "extra_info": {}})  # ignored
    path.write_text(json.dumps({"benchmarks": benchmarks}))


def test_ideal_bytes_ppm_matches_design_numbers():
    # DESIGN.md / PITFALLS.md: reading x once and writing the 4096-channel output once at
    # 2048x60x60 fp32 is about 88.5 MB per image; the weights (4 x 512 x 2048) come on top.
    s = Shape(1, 2048, 60, 60, 512, "float32")
    weights = 4 * 512 * 2048 * 4
    assert ideal_bytes("ppm", "fwd", s) - weights == pytest.approx(88.5e6, rel=1e-3)
    assert ideal_bytes("ppm", "fwd", Shape(8, 2048, 60, 60, 512, "bfloat16")) == 362_283_008
    # fwd+bwd adds the backward; kernel2's grad_x is a view (0 bytes); head has no byte count
    assert ideal_bytes("ppm", "fwd+bwd", s) > 2 * ideal_bytes("ppm", "fwd", s)
    k2 = ideal_bytes("kernel2", "fwd+bwd", s) - ideal_bytes("kernel2", "fwd", s)
    assert k2 == 4 * (4 * 512 * 3600 + 512 * 50)
    assert ideal_bytes("head", "fwd", s) is None


@pytest.mark.parametrize(
    "name, gbps",
    [
        ("NVIDIA H100 80GB HBM3", 3350.0),
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA H100 NVL", 3900.0),
        ("NVIDIA H200", 4800.0),
        ("NVIDIA A100-SXM4-40GB", 1555.0),
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA A100 80GB PCIe", 1935.0),
        ("NVIDIA A10G", 600.0),
        ("NVIDIA L4", 300.0),
        ("NVIDIA L40S", 864.0),
        ("NVIDIA GeForce RTX 4090", 1008.0),
        ("Tesla T4", 320.0),
        ("Some Future GPU", None),
    ],
)
def test_peak_bandwidth_table(name, gbps, monkeypatch):
    monkeypatch.delenv("PSP_BENCH_PEAK_GBPS", raising=False)
    assert peak_bandwidth_gbps(name) == gbps


def test_report_from_json(tmp_path, capsys):
    path = tmp_path / "nvidia-h100_2025-01-01.json"
    _write_json(path, _fake_run())
    records = summary.load_records(path)
    assert len(records) == 10
    rows = {(r["case"], r["pass"], r["provider"]): r for r in summary.speedups(records)}
    fused = rows["ppm", "fwd", "fused"]
    assert fused["vs_eager"] == pytest.approx(5.0)
    assert fused["vs_compiled"] == pytest.approx(250 / 120)
    assert rows["ppm", "fwd", "compiled"]["vs_compiled"] == pytest.approx(250 / 300)
    assert rows["ppm", "fwd+bwd", "fused"]["vs_compiled"] == pytest.approx(1.2)

    checks = {name: status for name, status, _ in summary.target_checks(summary.speedups(records))}
    assert checks["ppm fwd vs eager"] == "pass"
    assert checks["ppm fwd vs best compile"] == "pass"
    assert checks["ppm fwd bandwidth"] == "pass"  # 362 MB / 120 us = 3.02 TB/s = 90% of 3.35
    assert checks["ppm fwd+bwd vs eager"] == "pass"  # exactly 2.0x
    assert checks["ppm fwd+bwd vs best compile"] == "MISS"
    assert checks["ppm fwd+bwd peak memory"] == "MISS"
    assert checks["train step PSPNet-50 N8 473x473 bf16 vs eager"] == "pass"
    assert checks["train step PSPNet-50 N8 473x473 bf16 vs compile"] == "pass"

    out = tmp_path / "out"
    assert summary.main([str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| N8 C2048 60x60 R512 bf16 | fused | 0.120 | 5.00 | 2.08 | 3019 | 90 |" in text
    assert (out / "nvidia-h100_2025-01-01.md").read_text().startswith("## psp-kernels benchmarks")
    png = out / "nvidia-h100_2025-01-01.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_targets_not_run_and_empty(tmp_path):
    cpu = [dict(r, device="cpu") for r in _fake_run()]
    assert {s for _, s, _ in summary.target_checks(summary.speedups(cpu))} == {"not run"}
    empty = tmp_path / "empty.json"
    _write_json(empty, [])
    assert summary.main([str(empty)]) == 1
    assert summary.plot_speedups([_record("eager", "fwd", 1e-3)], tmp_path / "p.png") is None


def test_grids_and_skips():
    gpu = gpu_grid(full=False)
    ids = [b.id for b in gpu]
    assert len(ids) == len(set(ids))
    assert "ppm-fwd-N8-C2048-60x60-R512-bf16-fused" in ids
    assert "ppm-fwd+bwd-N8-C2048-60x60-R512-bf16-compiled-max-autotune" in ids
    assert len(gpu_grid(full=True)) > 2 * len(gpu)
    cpu = cpu_grid()
    assert {b.case for b in cpu} == {"kernel1", "kernel2", "ppm", "head", "train"}
    b = next(b for b in cpu if b.case == "ppm" and b.provider == "fused")
    kw = {"cuda": False, "gpu_shape": False, "full": False}
    assert "TRITON_INTERPRET" in skip_reason(b, interp=False, **kw)
    assert skip_reason(b, interp=True, **kw) is None
    assert skip_reason(gpu[0], cuda=False, gpu_shape=True, full=False, interp=False)
    n1 = Bench("ppm", "fwd+bwd", Shape(1, 2048, 60, 60, 512, "bfloat16"), "eager")
    assert "N=1" in skip_reason(n1, cuda=True, gpu_shape=True, full=False, interp=False)


def test_result_stem():
    import datetime

    assert result_stem("NVIDIA H100 80GB HBM3", datetime.date(2025, 1, 31)) == (
        "nvidia-h100-80gb-hbm3_2025-01-31"
    )


class _FakeBenchmark:
    """The parts of pytest-benchmark's fixture that ``measure`` uses."""

    def __init__(self):
        self.extra_info = {}
        self.stats = None
        self.calls = 0

    def pedantic(self, target, setup, rounds, iterations, warmup_rounds):
        assert iterations == 1 and warmup_rounds == 0
        for _ in range(rounds):
            setup()
            target()
            self.calls += 1


def test_measure_checks_against_eager_on_cpu():
    b = Bench("ppm", "fwd+bwd", Shape(2, 8, 7, 7, 4, "float32"), "eager")
    case = Case(b, torch.device("cpu"))
    eager = case.runnable("eager")
    bench = _FakeBenchmark()
    rec = measure(
        bench,
        eager,
        device=torch.device("cpu"),
        info={"provider": "eager"},
        reference=case.runnable("eager"),
    )
    assert bench.calls >= 2 and rec["max_rel_err"] == 0.0 and rec["peak_mem_bytes"] is None
    assert bench.extra_info["max_rel_err"] == 0.0

    def wrong():
        outs = eager.fn()
        return [outs[0] * 1.1, *outs[1:]]

    with pytest.raises(AssertionError, match="differs from eager"):
        measure(
            _FakeBenchmark(),
            Runnable(wrong, eager.setup),
            device=torch.device("cpu"),
            info={"provider": "fused"},
            reference=case.runnable("eager"),
        )
