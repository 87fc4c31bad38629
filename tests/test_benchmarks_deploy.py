"""benchmarks.compare_deploy / compare_pooling: the models compared are the same function, the
pooling compared is the same values, and the tables state the target honestly."""

import pytest
import torch

from benchmarks import compare_deploy, compare_pooling

pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


def test_official_layout_is_the_same_function():
    ours, official = compare_deploy.build_models(classes=3)
    assert ours.head == "concat_free" and official.head == "concat"
    assert type(official.ppm).__name__ == "PlainPPM"
    x = torch.randn(1, 3, 41, 33)
    with torch.no_grad():
        a, b = ours(x), official(x)
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-4


def _record(official, ort):
    names = compare_deploy.PROVIDERS
    med = dict(zip(names, (official, 1.0, ort), strict=True))
    return {
        "input": [1, 3, 473, 473],
        "threads": 2,
        "rounds": 3,
        "median_s": med,
        "min_s": med,
        "max_rel_err_vs_official": dict.fromkeys(names, 0.0),
        "paired_median": {"official / onnxruntime": official / ort},
        "paired_min_max": {"official / onnxruntime": [official / ort] * 2},
        "load_average_start_end": [0.5, 1.5],
        "cpu_count": 2,
        "torch": "t",
        "onnxruntime": "o",
    }


def test_deploy_table_states_the_target():
    assert "1.600x, **pass**" in compare_deploy.render(_record(1.6, 1.0))
    assert "1.499x, **fail**" in compare_deploy.render(_record(1.499, 1.0))


def test_pooling_case_compares_equal_values(monkeypatch):
    monkeypatch.setattr(compare_pooling, "SHAPES", ((1, 8, 13, 9),))
    rec = compare_pooling.compare(rounds=2, threads=1, log=lambda *a: None)
    assert len(rec["cases"]) == 4  # fwd / fwd+bwd x contiguous / channels_last
    assert all(c["max_rel_err"] < 1e-5 for c in rec["cases"])
    assert "| fwd+bwd | channels_last | 1x8x13x9 |" in compare_pooling.render(rec)
