"""ONNX and torch.export of PSPNet: exact at every input size, both heads; the export errors.

The models are exported once per session (``conftest.onnx_exports``: the tiny model with both
heads and a PSPNet-50, at a 65 x 65 example) and compared, through onnxruntime, with the PyTorch
model in eval mode at many other sizes.
"""

import sys

import pytest
import torch

import pspnet
from pspnet import export_ops
from pspnet.export import export_onnx, export_program
from pspnet.onnx_runtime import OnnxModel
from tests.deploy_models import build_export_model

# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")

#: float32, relative to the PyTorch logits' max abs
TOL = 1e-4

# (batch, height, width): odd and non-square inputs, maps smaller than the largest bin (inputs
# under 6 * 8), batch 3, a 512 crop (64 x 64 features), tiny inputs down to 1 x 1, and sizes
# where an export holding example-size tables goes wrong (81 x 81: silently wrong logits)
TINY_SIZES = [
    (1, 65, 65),  # the example size
    (1, 81, 81),
    (1, 89, 89),
    (3, 89, 89),
    (1, 64, 64),
    (1, 33, 33),
    (1, 97, 161),
    (1, 161, 97),
    (3, 97, 161),
    (1, 512, 512),
    (1, 105, 105),
    (1, 129, 161),
    (1, 97, 105),
    (2, 40, 30),
    (2, 17, 5),
    (1, 9, 9),
    (1, 1, 1),
]
PSPNET50_SIZES = [(1, 81, 81), (3, 33, 33), (1, 97, 161), (1, 64, 64)]


def _rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def runtimes(onnx_exports):
    return {name: (model, OnnxModel(path)) for name, (model, path) in onnx_exports.items()}


def _check_sizes(runtimes, name, sizes):
    model, runtime = runtimes[name]
    errors = {}
    for batch, h, w in sizes:
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            expected = model(x)
        got = runtime(x)
        assert got.shape == expected.shape, (name, batch, h, w)
        errors[(batch, h, w)] = _rel_err(got, expected)
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"{name}: onnxruntime differs from PyTorch at {bad}"


@pytest.mark.parametrize("name", ["tiny_concat", "tiny_concat_free"])
def test_onnxruntime_matches_pytorch_at_every_size(runtimes, name):
    _check_sizes(runtimes, name, TINY_SIZES)


def test_onnxruntime_matches_pytorch50(runtimes):
    _check_sizes(runtimes, "pspnet50", PSPNET50_SIZES)


def test_graph_does_not_depend_on_the_example_size(onnx_exports, tmp_path):
    """Exporting at another example size gives the same graph: nothing of the size is baked in."""
    import onnx

    model, path = onnx_exports["tiny_concat_free"]
    other = export_onnx(model, tmp_path / "other.onnx", example_size=(33, 47))

    def graph(p):
        g = onnx.load(str(p)).graph
        for node in g.node:
            del node.metadata_props[:]  # stack traces of the trace
        return g.SerializeToString()

    assert graph(path) == graph(other)


@pytest.mark.parametrize("name", ["tiny_concat", "tiny_concat_free", "pspnet50"])
def test_graph_is_dynamic_float32_and_plain(onnx_exports, name):
    import onnx

    _, path = onnx_exports[name]
    g = onnx.load(str(path)).graph
    (inp,), (out,) = g.input, g.output
    assert inp.name == "image" and out.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    elem_types = {t.type.tensor_type.elem_type for t in [*g.value_info, *g.input, *g.output]}
    elem_types |= {t.data_type for t in g.initializer}
    assert onnx.TensorProto.DOUBLE not in elem_types  # float32 taps: deployable without fp64
    # pooling and upsampling are matrix products: no Resize coordinate modes, no index tables
    ops = {node.op_type for node in g.node}
    assert not ops & {"Resize", "Upsample", "Gather", "GatherND", "ScatterND", "AveragePool"}
    assert "MatMul" in ops and "Range" in ops


@pytest.mark.parametrize("head", ["concat", "concat_free"])
def test_exported_program_runs_at_other_sizes(head):
    model = build_export_model("tiny", head)
    program = export_program(model, example_size=(65, 65))
    module = program.module()
    for batch, h, w in [(1, 1, 1), (3, 33, 33), (1, 97, 161), (2, 81, 89)]:
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            assert _rel_err(module(x), model(x)) <= TOL, (head, batch, h, w)


def test_plain_torch_export_takes_the_formulation():
    """``torch.export.export`` of the model itself (no helper) is exact at other sizes too."""
    model = build_export_model("tiny", "concat_free")
    dyn = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        program = torch.export.export(
            model, (torch.zeros(2, 3, 65, 65),), dynamic_shapes={"x": {0: dyn, 2: dyn, 3: dyn}}
        )
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("adaptive_avg_pool" in t or "upsample_bilinear" in t for t in targets)
    for batch, h, w in [(1, 9, 9), (3, 33, 33), (1, 81, 89)]:
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            assert _rel_err(program.module()(x), model(x)) <= TOL, (batch, h, w)


def test_formulation_is_used_only_while_exporting(monkeypatch):
    """Eager and torch.compile(fullgraph=True) keep the fused ops: the formulation never runs."""

    def fail(*args, **kwargs):
        raise AssertionError("the export formulation ran outside export")

    for name in ("adaptive_pools", "upsample", "upsample_concat", "shifted_upsample_add"):
        monkeypatch.setattr(export_ops, name, fail)
    assert not export_ops.exporting()
    for head in ("concat", "concat_free"):
        model = build_export_model("tiny", head)
        x = torch.randn(2, 3, 33, 33)
        with torch.no_grad():
            eager = model(x)
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(compiled, eager)
    torch._dynamo.reset()


def test_training_mode_is_refused(tmp_path):
    model = build_export_model("tiny", "concat").train()
    with pytest.raises(ValueError, match="training mode.*model.eval"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="training mode"):
        export_program(model)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_missing_onnx_packages_name_the_pip_command(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes "import <missing>" fail
    with pytest.raises(ImportError, match=rf"{missing}.*pip install"):
        export_onnx(build_export_model("tiny", "concat"), tmp_path / "m.onnx")


def test_missing_onnxruntime_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="onnxruntime.*pip install"):
        OnnxModel(tmp_path / "m.onnx")


def test_an_opset_the_exporter_cannot_make_is_refused(tmp_path):
    from tests.cli_run import make_checkpoint, one_error_line, run_cli_each

    pytest.importorskip("onnxscript")
    ck = make_checkpoint(tmp_path / "ck.pth")
    old, new, default = run_cli_each(
        ["export", "--checkpoint", ck, "--out", tmp_path / "m.onnx", "--static", "33", "33",
         "--opset", "1"],  # traced, then not convertible: refused before writing
        ["export", "--checkpoint", ck, "--out", tmp_path / "m.onnx", "--opset", "99"],  # no tracing
        ["export", "--checkpoint", ck, "--out", tmp_path / "m.onnx", "--opset", "0"],
    )  # fmt: skip
    line = one_error_line(old, "export")
    assert "opset (--opset) 1: the exporter cannot convert this model to it" in line
    assert "opset (--opset) 99 is newer than the installed onnx package knows" in one_error_line(
        new, "export"
    )
    assert "opset (--opset) must be a positive int" in one_error_line(default, "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]


def test_bad_arguments(tmp_path):
    model = build_export_model("tiny", "concat")
    for size in [(0, 5), (5,), "big", None]:
        with pytest.raises(ValueError, match="example_size"):
            export_onnx(model, tmp_path / "m.onnx", example_size=size)
    for opset in [0, 1.5, True]:
        with pytest.raises(ValueError, match="opset"):
            export_onnx(model, tmp_path / "m.onnx", opset=opset)
    with pytest.raises(TypeError, match="nn.Module"):
        export_onnx(lambda x: x, tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")


def test_public_names():
    assert pspnet.export_onnx is export_onnx and pspnet.export_program is export_program
