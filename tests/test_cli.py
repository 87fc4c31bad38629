"""Command line and configuration: train (1 tiny epoch) -> checkpoint -> eval -> predict, clear
errors for bad paths and corrupt files, YAML + command-line overrides, preset files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pspnet.__main__ import build_parser, main
from pspnet.cli_options import OPTIONS, config_from_args
from pspnet.config import PRESETS, Config, load_config, preset_config
from pspnet.evaluate import run_eval

CONFIG_DIR = Path(__file__).resolve().parents[1] / "pspnet" / "configs"


# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


TINY_YAML = {
    "preset": "synthetic",
    "dataset_kwargs": {"size": 33, "length": 16, "num_classes": 3, "max_shapes": 2},
    "tiny_width": 4,
    "crop_size": [33, 33],
    "batch_size": 4,
    "epochs": 1,
    "eval_every": 1,
    "val_batch_size": 8,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``python -m pspnet train`` for one tiny epoch; returns (run dir, yaml path)."""
    root = tmp_path_factory.mktemp("cli")
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY_YAML))
    out = root / "run"
    rc = main(["train", "--config", str(cfg_path), "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    return out, cfg_path


def test_train_writes_checkpoint_log_plot(trained, capsys):
    out, cfg_path = trained
    assert (out / "last.pth").is_file()
    assert (out / "curves.png").is_file()
    assert (out / "config.yaml").is_file()
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert {"epoch", "loss", "aux_loss", "lr", "time", "val_mIoU", "val_allAcc"} <= set(rows[0])
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and state["config"]["classes"] == 3
    assert state["config"]["tiny_width"] == 4
    # the final evaluation written is the saved model's: evaluating the checkpoint again gives
    # the same confusion matrix, so bitwise the same metrics (NaN for absent classes included)
    metrics = json.loads((out / "eval.json").read_text())
    cfg = load_config(cfg_path, progress=False)
    again = run_eval(cfg, str(out / "last.pth"), log=lambda *a, **k: None)
    again = json.loads(json.dumps(dict(again, class_names=metrics["class_names"])))
    assert json.dumps(again, sort_keys=True) == json.dumps(metrics, sort_keys=True)
    assert metrics["pixels"] == 16 * 33 * 33  # every pixel of the val split, none ignored


def test_eval_cli_prints_table(trained, capsys):
    out, cfg_path = trained
    ck = str(out / "last.pth")
    rc = main(["eval", "--checkpoint", ck, "--config", str(cfg_path), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "background" in text and "circle" in text
    rc = main(
        ["eval", "--checkpoint", ck, "--config", str(cfg_path), "--scales", "0.75", "1.0",
         "--flip", "--mode", "slide", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    assert "flip True, mode slide" in capsys.readouterr().out
    # without --preset/--config the checkpoint's own config (tiny synthetic data) is used
    rc = main(["eval", "--checkpoint", ck, "--no-progress", "--val-batch-size", "16"])
    assert rc == 0
    assert "synthetic/val: 16 images" in capsys.readouterr().out


def _png(path, size=(40, 30)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_predict_cli_writes_mask_and_overlay(trained, tmp_path, capsys):
    out, _ = trained
    img = _png(tmp_path / "scene.png")
    jpg = tmp_path / "other.jpg"
    Image.open(img).convert("L").save(jpg)  # greyscale input works too
    dest = tmp_path / "pred"
    rc = main(["predict", str(img), str(jpg), "--checkpoint", str(out / "last.pth"),
               "--out", str(dest)])  # fmt: skip
    assert rc == 0
    mask = Image.open(dest / "scene_mask.png")
    assert mask.mode == "P" and mask.size == (40, 30)
    assert int(np.array(mask).max()) < 3
    pal = mask.getpalette()[:9]
    assert pal[:3] == [0, 0, 0] and pal[3:6] != pal[6:9]
    ov = Image.open(dest / "scene_overlay.png")
    assert ov.mode == "RGB" and ov.size == (80, 30)
    # the left half is the input image
    assert np.array_equal(np.array(ov)[:, :40], np.array(Image.open(img).convert("RGB")))
    assert (dest / "other_mask.png").is_file() and (dest / "other_overlay.png").is_file()
    assert "scene_mask.png" in capsys.readouterr().out


def test_predict_bad_inputs_give_clear_errors(trained, tmp_path, capsys):
    out, _ = trained
    ck = str(out / "last.pth")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rc = main(["predict", str(bad), "--checkpoint", ck, "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "broken.png" in err
    assert not (tmp_path / "o").exists()  # nothing written
    rc = main(["predict", str(tmp_path / "missing.png"), "--checkpoint", ck])
    assert rc == 2 and "image not found" in capsys.readouterr().err
    img = _png(tmp_path / "ok.png")
    rc = main(["predict", str(img), "--checkpoint", str(tmp_path / "nope.pth")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    rc = main(["predict", str(img), "--checkpoint", str(junk)])
    assert rc == 2 and "not a PyTorch checkpoint" in capsys.readouterr().err


def test_eval_and_train_errors(tmp_path, capsys):
    rc = main(["eval", "--checkpoint", str(tmp_path / "none.pth")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err
    rc = main(["train", "--config", str(tmp_path / "none.yaml")])
    assert rc == 2 and "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    rc = main(["train", "--config", str(bad)])
    assert rc == 2 and "unknown config keys: epochz" in capsys.readouterr().err
    rc = main(["train", "--amp", "fp8"])
    assert rc == 2 and "amp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "imagenet"])


# ------------------------------------------------------------------------------ config


def test_config_layers_yaml_then_cli(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: ade20k\nepochs: 3\nbase_lr: 0.02\ncrop_size: 97\n")
    args = build_parser().parse_args(
        ["train", "--config", str(p), "--epochs", "5", "--no-blur", "--scales", "0.5", "1"]
    )
    cfg = config_from_args(args)
    assert cfg.preset == "ade20k" and cfg.classes == 150  # from the preset
    assert cfg.base_lr == 0.02 and cfg.crop_size == (97, 97)  # from the file
    assert cfg.epochs == 5 and cfg.blur is False and cfg.scales == (0.5, 1.0)  # command line
    assert cfg.out_dir == Path("runs/ade20k")
    # --preset beats the file's preset
    args = build_parser().parse_args(["train", "--config", str(p), "--preset", "voc"])
    assert config_from_args(args).classes == 21
    assert load_config(None).preset == "synthetic"
    args = build_parser().parse_args(
        ["train", "--dataset-opt", "size=33", "--dataset-opt", "list_file=a b.txt"]
    )
    assert config_from_args(args).dataset_kwargs == {"size": 33, "list_file": "a b.txt"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        config_from_args(build_parser().parse_args(["train", "--dataset-opt", "size"]))


def test_presets_match_official_recipes():
    for name, classes, crop, epochs in (
        ("ade20k", 150, 473, 100), ("cityscapes", 19, 713, 200), ("voc", 21, 473, 50)
    ):  # fmt: skip
        c = preset_config(name)
        assert (c.classes, c.crop_size, c.epochs, c.batch_size) == (
            classes,
            (crop, crop),
            epochs,
            16,
        )
        assert (c.base_lr, c.momentum, c.weight_decay, c.power) == (0.01, 0.9, 1e-4, 0.9)
        assert (c.aux_weight, c.ignore_index, c.head_lr_mult) == (0.4, 255, 10.0)
        assert (c.scale_min, c.scale_max, c.rotate_min, c.rotate_max) == (0.5, 2.0, -10, 10)
        assert c.arch == "pspnet" and c.layers == 50 and c.zoom_factor == 8
    syn = preset_config("synthetic")
    assert syn.arch == "tiny" and syn.dataset == "synthetic"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_yaml_files_equal_presets(name):
    path = CONFIG_DIR / f"{name}.yaml"
    assert load_config(path) == preset_config(name)
    assert Config.from_dict(yaml.safe_load(path.read_text())) == preset_config(name)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_files_hold_only_what_differs_from_the_defaults(name):
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert data["preset"] == name
    unknown = set(data) - {f.name for f in dataclasses.fields(Config)}
    assert not unknown, f"{name}.yaml: unknown keys {sorted(unknown)}"
    defaults = Config().to_dict()
    same = [
        k for k, v in data.items() if k != "preset" and Config(**{k: v}).to_dict()[k] == defaults[k]
    ]
    assert not same, f"{name}.yaml repeats the defaults of {same}: leave them out"


def test_config_validation():
    with pytest.raises(ValueError, match="eval_mode"):
        Config(eval_mode="tiles")
    with pytest.raises(ValueError, match="crop_size"):
        Config(crop_size=(0, 5))
    with pytest.raises(ValueError, match="unknown config keys"):
        Config.from_dict({"lr": 1})
    assert Config(crop_size=65).crop_size == (65, 65)


def test_module_entry_point_runs():
    r = subprocess.run(
        [sys.executable, "-m", "pspnet", "train", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0
    assert "--resume" in r.stdout and "--compile" in r.stdout and "--amp" in r.stdout


def test_official_style_checkpoint_needs_a_config(tmp_path):
    from pspnet.build import model_from_checkpoint
    from pspnet.model import TinyPSPNet

    model = TinyPSPNet(classes=3, width=4)
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    path = tmp_path / "official.pth"
    torch.save({"epoch": 50, "state_dict": sd}, path)
    with pytest.raises(ValueError, match="holds no config"):
        model_from_checkpoint(path)
    cfg = Config(arch="tiny", tiny_width=4, classes=3)
    loaded, cfg2, _ = model_from_checkpoint(path, cfg)
    assert not loaded.training and cfg2.classes == 3
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ------------------------------------------------------------------------- every CLI flag

# a value for every config option: (command-line words, the Config value they give)
FLAG_VALUES = {
    "dataset": (["voc"], "voc"),
    "data_root": (["none"], None),
    "train_split": (["trainaug"], "trainaug"),
    "val_split": (["test"], "test"),
    "classes": (["7"], 7),
    "ignore_index": (["0"], 0),
    "arch": (["tiny"], "tiny"),
    "layers": (["101"], 101),
    "bins": (["1", "2", "4"], (1, 2, 4)),
    "dropout": (["0.25"], 0.25),
    "zoom_factor": (["4"], 4),
    "backbone_path": (["r50.pth"], "r50.pth"),
    "aux_weight": (["0.5"], 0.5),
    "tiny_width": (["8"], 8),
    "head": (["concat"], "concat"),
    "crop_size": (["97"], (97, 97)),
    "scale_min": (["0.6"], 0.6),
    "scale_max": (["1.8"], 1.8),
    "rotate_min": (["-5"], -5.0),
    "rotate_max": (["5"], 5.0),
    "epochs": (["3"], 3),
    "batch_size": (["4"], 4),
    "base_lr": (["0.05"], 0.05),
    "momentum": (["0.8"], 0.8),
    "weight_decay": (["0.001"], 0.001),
    "power": (["1.0"], 1.0),
    "head_lr_mult": (["5"], 5.0),
    "max_iters_per_epoch": (["2"], 2),
    "workers": (["0"], 0),
    "seed": (["11"], 11),
    "output_dir": (["out/x"], "out/x"),
    "device": (["cpu"], "cpu"),
    "threads": (["2"], 2),
    "compile_backend": (["aot_eager"], "aot_eager"),
    "amp": (["bf16"], "bf16"),
    "resume": (["auto"], "auto"),
    "save_freq": (["2"], 2),
    "list_file": (["train.txt"], "train.txt"),
    "val_list_file": (["val.txt"], "val.txt"),
    "max_bad_steps": (["3"], 3),
    "max_image_pixels": (["300000000"], 300000000),
    "eval_every": (["3"], 3),
    "val_batch_size": (["2"], 2),
    "scales": (["0.5", "1"], (0.5, 1.0)),
    "eval_mode": (["slide"], "slide"),
    "base_size": (["600"], 600),
    "stride_rate": (["0.5"], 0.5),
}
_BOOLS = {name for name, kind, _ in OPTIONS if kind is bool}
_REQUIRED = {"train": [], "eval": ["--checkpoint", "c.pth"], "export": ["--checkpoint", "c.pth",
             "--out", "m.onnx"], "predict": ["x.png", "--checkpoint", "c.pth"]}  # fmt: skip


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, sub.choices


def _config_flags():
    names = {name for name, _, _ in OPTIONS}
    _, subs = _subparsers()
    return [
        (cmd, a.option_strings[0], a.dest)
        for cmd, sp in subs.items()
        for a in sp._actions
        if a.dest in names and a.option_strings[0] == "--" + a.dest.replace("_", "-")
    ]


def test_every_config_field_has_an_option():
    fields = {f.name for f in dataclasses.fields(Config)} - {"preset", "dataset_kwargs"}
    assert [n for n, _, _ in OPTIONS] == [n for n in (f.name for f in dataclasses.fields(Config))
                                          if n in fields]  # fmt: skip
    assert set(FLAG_VALUES) | _BOOLS == fields
    assert (
        len(_config_flags()) == 59 + 57 + 17 + 6
    )  # train, eval (no --flip, --overwrite), predict,
    # export


@pytest.mark.parametrize("cmd, flag, dest", _config_flags())
def test_config_flag(cmd, flag, dest):
    parser, _ = _subparsers()

    def parse(*words):
        return config_from_args(parser.parse_args([cmd, *_REQUIRED[cmd], *words]))

    if dest in _BOOLS:
        default = getattr(load_config(), dest)
        assert getattr(parse(), dest) is default
        assert getattr(parse(flag), dest) is True
        assert getattr(parse("--no-" + flag[2:]), dest) is False
        return
    words, value = FLAG_VALUES[dest]
    assert getattr(parse(flag, *words), dest) == value
    if "_" in dest:  # the underscore spelling works too
        assert getattr(parse("--" + dest, *words), dest) == value


def test_command_options():
    parser, _ = _subparsers()
    a = parser.parse_args(["eval", "--checkpoint", "c.pth", "--flip", "--mode", "slide"])
    cfg = config_from_args(a)
    assert (a.checkpoint, cfg.eval_flip, cfg.eval_mode) == ("c.pth", True, "slide")
    assert parser.parse_args(["eval", "--onnx", "m.onnx"]).onnx == "m.onnx"
    a = parser.parse_args(
        ["predict", "a.png", "b.png", "--onnx", "m.onnx", "--out", "o", "--alpha", "0.3",
         "--flip", "--mode", "slide"]
    )  # fmt: skip
    cfg = config_from_args(a)
    assert (a.images, a.out, a.alpha, cfg.eval_flip, cfg.eval_mode) == (
        ["a.png", "b.png"], "o", 0.3, True, "slide"
    )  # fmt: skip
    a = parser.parse_args(
        ["export", "--checkpoint", "c.pth", "--out", "m.onnx", "--static", "33", "41",
         "--opset", "18"]
    )  # fmt: skip
    assert (a.checkpoint, a.out, a.static, a.opset) == ("c.pth", "m.onnx", [33, 41], 18)
    for cmd in ("eval", "predict"):  # a model source is required, one only
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, *(["x.png"] if cmd == "predict" else [])])
    assert config_from_args(parser.parse_args(["train", "--preset", "voc"])).preset == "voc"


def test_presets_agree_with_dataset_facts():
    from pspnet.data import DATASETS

    for name in ("ade20k", "cityscapes", "voc"):
        c, facts = preset_config(name), DATASETS[name]
        crop = facts["crop_size"]
        assert (c.classes, c.crop_size, c.base_size) == (
            facts["classes"], (crop, crop), facts["base_size"]
        )  # fmt: skip
