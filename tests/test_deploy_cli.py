"""``python -m pspnet export`` and ``predict`` / ``eval --onnx``: the same masks, overlays and
scores as the checkpoint path, the config carried in the ONNX file, static graphs, clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pspnet.__main__ import main
from tests.test_cli import TINY_YAML

for _name in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_name, reason='needs the deploy extra: pip install -e ".[deploy]"')

from pspnet.onnx_runtime import OnnxModel  # noqa: E402

# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")

# test_cli's one-epoch tiny run, smaller (8 images) and without its evaluation and plot
TINY = {**TINY_YAML, "final_eval": False, "eval_every": 0, "plot": False, "val_batch_size": 4}
TINY["dataset_kwargs"] = {**TINY_YAML["dataset_kwargs"], "length": 8}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A one-epoch tiny checkpoint and its dynamic ONNX export (both through the CLI)."""
    root = tmp_path_factory.mktemp("deploy")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run = root / "run"
    argv = ["train", "--config", str(root / "tiny.yaml"), "--output-dir", str(run)]
    assert main([*argv, "--no-progress"]) == 0
    ckpt, onnx_path = run / "last.pth", root / "tiny.onnx"
    # one epoch predicts background everywhere: a random classifier (its 3x3 and its 1x1 conv)
    # makes the masks vary, whatever the trained weights are
    state = torch.load(ckpt, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for key in ("cls.0.weight", "cls.4.weight"):
        weight = state["model"][key]
        weight.copy_(torch.randn(weight.shape, generator=g) * 3)
    state["model"]["cls.4.bias"].zero_()
    torch.save(state, ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(onnx_path)]) == 0
    return ckpt, onnx_path


def _images(root):
    rng = np.random.default_rng(0)
    paths = []
    for name, (w, h) in {"a.png": (40, 30), "b.png": (71, 53), "c.png": (33, 33)}.items():
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        arr[: h // 2] //= 3  # some structure, so the masks are not one class
        Image.fromarray(arr).save(root / name)
        paths.append(str(root / name))
    return paths


def test_predict_onnx_writes_the_same_masks_and_overlays(exported, tmp_path, capsys):
    ckpt, onnx_path = exported
    images = _images(tmp_path)
    assert main(["predict", *images, "--checkpoint", str(ckpt), "--out", str(tmp_path / "t")]) == 0
    assert main(["predict", *images, "--onnx", str(onnx_path), "--out", str(tmp_path / "o")]) == 0
    for stem in ("a", "b", "c"):
        for kind in ("mask", "overlay"):
            ref = Image.open(tmp_path / "t" / f"{stem}_{kind}.png")
            got = Image.open(tmp_path / "o" / f"{stem}_{kind}.png")
            assert got.mode == ref.mode and got.size == ref.size
            assert np.array_equal(np.array(got), np.array(ref)), (stem, kind)
    assert len(np.unique(np.array(Image.open(tmp_path / "t" / "b_mask.png")))) > 1


def test_eval_onnx_scores_like_the_checkpoint(exported, capsys):
    ckpt, onnx_path = exported
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--no-progress"]) == 0
    ref = capsys.readouterr().out
    assert main(["eval", "--onnx", str(onnx_path), "--no-progress"]) == 0
    got = capsys.readouterr().out
    assert "mIoU" in ref and got == ref  # the checkpoint's config came along: same data, scores


def test_export_stores_config_and_dynamic_shapes(exported):
    _, onnx_path = exported
    model = OnnxModel(onnx_path)
    cfg = json.loads(model.metadata["pspnet.config"])
    assert cfg["arch"] == "tiny" and cfg["tiny_width"] == 4 and cfg["classes"] == 3
    assert model.input_shape == [None, 3, None, None] and model.classes == 3


def test_static_export(exported, tmp_path, capsys):
    ckpt, _ = exported
    path = tmp_path / "static.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(path), "--static", "33", "33"]
    assert main(argv) == 0
    model = OnnxModel(path)
    assert model.input_shape == [1, 3, 33, 33]
    # the 33x33 validation images in batches of 4 run image by image through the batch-1 graph
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--no-progress"]) == 0
    ref = capsys.readouterr().out
    assert main(["eval", "--onnx", str(path), "--no-progress"]) == 0
    assert capsys.readouterr().out == ref
    # another size: a clear error naming the fixed size
    img = _images(tmp_path)[0]
    assert main(["predict", img, "--onnx", str(path), "--out", str(tmp_path / "p")]) == 2
    assert "exported for 33x33 inputs only" in capsys.readouterr().err


def test_export_errors(exported, tmp_path, capsys, monkeypatch):
    ckpt, onnx_path = exported
    missing = str(tmp_path / "missing.onnx")
    assert main(["predict", _images(tmp_path)[0], "--onnx", missing]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one model source
        main(["predict", "x.png", "--onnx", str(onnx_path), "--checkpoint", str(ckpt)])
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "pip install" in err
    assert not (tmp_path / "m.onnx").exists()
