"""Fast checks of the head-layout comparison in benchmarks/ (concat vs concat_free): grid and
skips, FLOP and saved-bytes counts on a tiny head, the report's table and target checks."""

import pytest
import torch

from benchmarks import summary
from benchmarks.grids import CPU_MODEL_FWD, Bench, Shape, cmp_cpu_grid, cmp_gpu_grid, skip_reason
from benchmarks.harness import saved_tensor_bytes
from benchmarks.providers import Case


def test_grids_and_opt_in():
    gpu = cmp_gpu_grid(full=False)
    ids = [b.id for b in gpu]
    assert len(ids) == len(set(ids))
    assert "modelcmp-fwd+bwd-PSPNet-50-N8-473x473-bf16-concat_free" in ids
    assert "headcmp-fwd-N8-C2048-60x60-R512-bf16-concat_free-compiled" in ids
    assert len(cmp_gpu_grid(full=True)) > len(gpu)
    cpu = cmp_cpu_grid()
    big = next(b for b in cpu if b.shape == CPU_MODEL_FWD and b.provider == "concat_free")
    kw = {"cuda": False, "gpu_shape": False, "interp": False}
    assert "--bench-cpu-model" in skip_reason(big, full=False, **kw)
    assert skip_reason(big, full=False, cpu_model=True, **kw) is None
    runs = [b for b in cpu if skip_reason(b, full=False, **kw) is None]
    assert {b.provider for b in runs} == {"concat", "concat_free"}
    assert {b.case for b in runs} == {"headcmp", "modelcmp"}


def test_saved_tensor_bytes():
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(3, 4)
    # mm saves x (excluded) and w (excluded); relu saves its 3x4 float32 result
    assert saved_tensor_bytes(lambda: torch.relu(x @ w), exclude=[w, x]) == 3 * 4 * 4
    # without exclusions x (saved by mm for grad_w) counts too; w is not saved (x needs no grad)
    assert saved_tensor_bytes(lambda: torch.relu(x @ w)) == 3 * 4 * 4 * 2


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_tiny_head_layouts_agree_and_count(pass_):
    b = Bench("headcmp", pass_, Shape(1, 16, 8, 8, 4), "concat_free")
    case = Case(b, torch.device("cpu"))
    ref, free = case.runnable("concat"), case.runnable("concat_free")
    outs = []
    for run in (ref, free):
        run.setup()
        outs.append([t.detach().clone() for t in run.fn()])
    assert len(outs[0]) == (1 if pass_ == "fwd" else 3)
    for a, c in zip(*outs, strict=True):
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    cf, cc = case.counts("concat_free"), case.counts("concat")
    assert 0 < cf["flops"] < cc["flops"]
    if pass_ == "fwd":
        assert cf["saved_bytes"] is None
    else:
        assert cf["saved_bytes"] > 0 and cc["saved_bytes"] > 0


def _rec(provider, pass_, device, n, time_s, flops, mem=None, crop=473):
    return {
        "case": "modelcmp",
        "pass": pass_,
        "provider": provider,
        "config": f"PSPNet-50 N{n} {crop}x{crop}",
        "input_bytes": n * 3 * crop * crop * 4,
        "n": n,
        "crop": crop,
        "dtype": "float32",
        "device": device,
        "device_name": "cpu" if device == "cpu" else "NVIDIA H100",
        "time_s": time_s,
        "flops": flops,
        "saved_bytes": None,
        "peak_mem_bytes": mem,
    }


def test_report_table_and_targets():
    recs = [
        _rec("concat", "fwd", "cpu", 1, 12.2, 324e9),
        _rec("concat_free", "fwd", "cpu", 1, 10.5, 256e9),
    ]
    rows = summary.speedups(recs)
    free = rows[1]
    assert free["vs_concat"] == pytest.approx(12.2 / 10.5)
    assert free["flops_vs_concat"] == pytest.approx(256 / 324)
    checks = {name.split(",")[0]: status for name, status, _ in summary.cmp_target_checks(rows)}
    assert list(checks.values()) == ["pass", "pass", "not run"]
    text = summary.render(recs)
    assert "### modelcmp fwd (head layouts)" in text and "| 1.16 |" in text and "-21%" in text
    assert "### ppm" not in text
    slow = [dict(recs[0]), dict(recs[1], time_s=11.5, flops=300e9)]
    gpu = [
        _rec("concat", "fwd+bwd", "cuda", 8, 1.0, 1e12, mem=10 * 2**30),
        _rec("concat_free", "fwd+bwd", "cuda", 8, 0.9, 0.8e12, mem=int(9.5 * 2**30)),
    ]
    statuses = [s for _, s, _ in summary.cmp_target_checks(summary.speedups(slow + gpu))]
    assert statuses == ["MISS", "MISS", "MISS"]
