"""benchmarks.compare_loss: the two variants compute the same step, one through the fused loss
and one through the materialised path, and the tables state the targets honestly."""

import pytest
import torch
import torch.nn as nn

import pspnet.model as model_mod
from benchmarks import compare_loss

pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


def test_materialised_criterion_is_the_same_loss_on_the_other_path():
    crit = compare_loss.MaterialisedCrossEntropy(ignore_index=255)
    assert model_mod.fused_loss_options(crit) is None
    assert model_mod.fused_loss_options(nn.CrossEntropyLoss(ignore_index=255)) is not None
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    expected = nn.functional.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(crit(logits, target), expected)


def test_children_compute_the_same_losses(monkeypatch):
    """Both variants' first step at a small crop: the same losses (the fused path is taken in
    one and not in the other)."""
    calls = []
    fused = model_mod.upsample_cross_entropy
    monkeypatch.setattr(model_mod, "upsample_cross_entropy",
                        lambda *a, **k: calls.append(1) or fused(*a, **k))  # fmt: skip
    runs = {v: compare_loss._child(v, batch=2, crop=33, steps=1, threads=1) for v in
            compare_loss.VARIANTS}  # fmt: skip
    assert len(calls) == 2 * 2  # two heads, the warm-up and the timed step, fused only
    a, b = runs["fused"]["first_losses"], runs["materialised"]["first_losses"]
    assert a == pytest.approx(b, rel=1e-5)
    assert all(t > 0 for r in runs.values() for t in r["times_s"])


def _record(speedup, saving):
    run = {"times_s": [1.0, 1.0], "first_losses": [5.0, 5.0], "max_rss_bytes": 2**30,
           "load_average": [0.5, 0.6]}  # fmt: skip
    return {
        "batch": 2, "crop": 473, "classes": 150, "steps": 2, "threads": 2, "rounds": 1,
        "cpu_count": 2, "torch": "t",
        "runs": [{"fused": dict(run, variant="fused"), "materialised": dict(run)}],
        "summary": {v: {"step_median_s": 1.0, "max_rss_median_gib": 1.0}
                    for v in compare_loss.VARIANTS},
        "speedup_paired_median": speedup, "memory_saving_paired_median": saving,
        "decomposed": {"times_s": {"no loss": [9.0], "fused": [9.2], "materialised": [10.0]},
                       "loss_cost_median_s": {"fused": 0.2, "materialised": 1.0},
                       "ceiling_paired_median": 1.11},
    }  # fmt: skip


def test_render_states_the_targets():
    text = compare_loss.render(_record(1.2, 0.2))
    assert "peak memory >= 15% lower: **pass**" in text
    assert "step >= 1.15x faster: **pass**" in text
    text = compare_loss.render(_record(1.1, 0.1))
    assert "peak memory >= 15% lower: **MISS**" in text
    assert "step >= 1.15x faster: **MISS**" in text
    assert "the most any loss could gain" in text and "1.11x" in text
