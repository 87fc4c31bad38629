"""Faults and bad input: checkpoint files that are not, or not for this model; list datasets,
the pretrained backbone, the training plot, data faults, failed writes, non-finite losses,
preemption, too little data."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

from pspnet.build import model_from_checkpoint
from pspnet.checkpoint import load_checkpoint, load_training_state
from pspnet.model import TinyPSPNet

# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


class _Opaque:
    """A Python object that torch.load(weights_only=True) refuses."""


def _tiny(classes=3, **kw):
    return TinyPSPNet(classes=classes, width=4, **kw)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """name -> (path, regex the message must match) of files that must not load."""
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.pth"
    torch.save({"model": _tiny().state_dict(), "epoch": 1}, good)
    raw = good.read_bytes()
    legacy = d / "legacy.pth"
    torch.save({"w": torch.zeros(64)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "text.pth": (b"epoch 3, loss 0.1\n", "not a PyTorch checkpoint"),
        "empty.pth": (b"", "empty"),
        "pickle.pth": (pickle.dumps({"a": [1, 2, 3]}), "plain Python pickle"),
        "truncated.pth": (raw[: len(raw) // 2], "truncated or corrupt"),
        "legacy_cut.pth": (legacy.read_bytes()[:150], "truncated or corrupt"),
    }
    out = {}
    for name, (data, pattern) in files.items():
        (d / name).write_bytes(data)
        out[name] = (d / name, pattern)
    with zipfile.ZipFile(d / "other.zip.pth", "w") as z:
        z.writestr("notes/readme.txt", "hello")
    out["other.zip.pth"] = (d / "other.zip.pth", "zip archive without the data.pkl")
    torch.save({"model": _tiny(classes=5).state_dict(), "epoch": 1}, d / "classes5.pth")
    out["classes5.pth"] = (d / "classes5.pth", r"class count.*classes: checkpoint 5, model 3")
    torch.save({"model": _tiny(use_ppm=False).state_dict(), "epoch": 1}, d / "noppm.pth")
    out["noppm.pth"] = (d / "noppm.pth", r"architecture.*PPM: checkpoint none, model 4 bins")
    torch.save({"model": TinyPSPNet(classes=3, width=8).state_dict(), "epoch": 1}, d / "w8.pth")
    out["w8.pth"] = (d / "w8.pth", r"architecture.*backbone: checkpoint .*256 features")
    sd = _tiny().state_dict()
    sd.pop("aux.4.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"model": sd, "epoch": 1}, d / "keys.pth")
    out["keys.pth"] = (d / "keys.pth", r"missing key.*aux\.4\.bias.*unexpected.*extra\.weight")
    return out


def _loaders():
    return {
        "load_checkpoint": lambda p: load_checkpoint(_tiny(), p),
        "load_training_state": lambda p: load_training_state(p, _tiny()),
    }


@pytest.mark.parametrize("loader", ["load_checkpoint", "load_training_state"])
def test_bad_checkpoints_get_one_clear_message(bad_files, loader):
    for name, (path, pattern) in bad_files.items():
        with pytest.raises(ValueError, match=pattern) as info:
            _loaders()[loader](path)
        msg = str(info.value)
        assert name in msg, msg  # names the file
        assert "weights_only" not in msg, msg  # no advice to unpickle a file of unknown origin
        assert "\n" not in msg, msg  # one message, not torch's page of advice


def test_model_from_checkpoint_bad_files(bad_files):
    for name in ("text.pth", "pickle.pth", "truncated.pth", "other.zip.pth"):
        path, pattern = bad_files[name]
        with pytest.raises(ValueError, match=pattern) as info:
            model_from_checkpoint(path)
        assert name in str(info.value) and "weights_only" not in str(info.value)


def test_only_real_python_objects_mention_weights_only(tmp_path):
    path = tmp_path / "pyobj.pth"
    torch.save({"model": _tiny().state_dict(), "epoch": 1, "args": _Opaque()}, path)
    for load in (*_loaders().values(), model_from_checkpoint):
        with pytest.raises(ValueError, match="weights_only=False") as info:
            load(path)
        msg = str(info.value)
        assert "pyobj.pth" in msg and "_Opaque" in msg and "trust" in msg, msg
    model = _tiny()
    load_checkpoint(model, path, weights_only=False)  # the explicit opt-in still works


def test_cli_eval_reports_bad_checkpoint(bad_files, capsys):
    from pspnet.__main__ import main

    path, _ = bad_files["pickle.pth"]
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pickle.pth" in err and "plain Python pickle" in err and "weights_only" not in err


# ---------------------------------------------------------------------- which mIoU


def _official_cal_acc(pairs, classes, ignore_index=255):
    """hszhao/semseg tool/test.py ``cal_acc`` with util.intersectionAndUnion, in numpy."""
    import numpy as np

    inter_sum = np.zeros(classes)
    union_sum = np.zeros(classes)
    target_sum = np.zeros(classes)
    for pred, target in pairs:
        output = pred.reshape(-1).copy()
        target = target.reshape(-1)
        output[np.where(target == ignore_index)[0]] = ignore_index
        intersection = output[np.where(output == target)[0]]
        area_i, _ = np.histogram(intersection, bins=np.arange(classes + 1))
        area_o, _ = np.histogram(output, bins=np.arange(classes + 1))
        area_t, _ = np.histogram(target, bins=np.arange(classes + 1))
        inter_sum += area_i
        union_sum += area_o + area_t - area_i
        target_sum += area_t
    iou = inter_sum / (union_sum + 1e-10)
    acc = inter_sum / (target_sum + 1e-10)
    return np.mean(iou), np.mean(acc), sum(inter_sum) / (sum(target_sum) + 1e-10)


def test_miou_is_the_official_mean_over_all_classes():
    import numpy as np

    from pspnet.metrics import ConfusionMeter, format_table

    g = np.random.default_rng(3)
    classes = 6
    pairs = []
    for _ in range(4):
        target = g.integers(0, 4, (17, 23))  # classes 4 and 5 never in the ground truth
        target[g.random(target.shape) < 0.1] = 255
        pred = np.where(g.random(target.shape) < 0.6, target, g.integers(0, 5, target.shape))
        pred = np.where(pred == 255, 0, pred)  # class 4 predicted, never true
        pairs.append((pred, target))
    meter = ConfusionMeter(classes)
    for pred, target in pairs:
        meter.update(torch.from_numpy(pred), torch.from_numpy(target))
    m = meter.compute([f"c{i}" for i in range(classes)])
    miou, macc, all_acc = _official_cal_acc(pairs, classes)
    assert m["mIoU"] == pytest.approx(miou, abs=1e-9)
    assert m["mAcc"] == pytest.approx(macc, abs=1e-9)
    assert m["allAcc"] == pytest.approx(all_acc, abs=1e-9)
    # the present-class means are kept beside it, labelled, and differ here
    iou = np.array(m["iou"])
    assert m["mIoU_present"] == pytest.approx(np.nanmean(iou))  # classes 0..4 (4: predicted)
    assert np.isnan(iou[5]) and iou[4] == 0.0
    assert m["mIoU_present"] > m["mIoU"] + 0.05
    assert m["absent_classes"] == [4, 5] and m["absent_class_names"] == ["c4", "c5"]
    table = format_table(m)
    assert f"mIoU {m['mIoU']:.4f}" in table and "official: mean over all 6 classes" in table
    assert f"mIoU_present {m['mIoU_present']:.4f}" in table
    assert "absent from the ground truth: 2 of 6: c4 (4), c5 (5)" in table


# ------------------------------------------------------------------ list dataset


def _list_data(root, names, size=33, classes=3, seed=0):
    """PNG image / label pairs under ``root`` and a list file naming them; returns its path."""
    from tests.cli_run import list_pairs

    lst = root / f"list_{names[0]}.txt"
    lst.write_text("\n".join(list_pairs(root, names, size, classes, seed)) + "\n")
    return lst


def _list_cfg(tmp_path, **kw):
    from pspnet.config import Config

    base = dict(
        preset="synthetic", dataset="list", dataset_kwargs={"num_classes": 3},
        data_root=str(tmp_path / "data"), arch="tiny", tiny_width=4, pretrained=False,
        crop_size=(33, 33), scale_min=1.0, scale_max=1.0, rotate_min=0.0, rotate_max=0.0,
        blur=False, batch_size=2, epochs=1, max_iters_per_epoch=1, workers=0, progress=False,
        plot=False, final_eval=True, eval_every=0, val_batch_size=4,
        output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    base.update(kw)
    return Config.from_dict(base)


def test_list_dataset_validates_on_its_own_list(tmp_path):
    from pspnet.data.loaders import build_datasets
    from pspnet.train import train

    data = tmp_path / "data"
    train_list = _list_data(data, ["t0", "t1", "t2", "t3"])
    val_list = _list_data(data, ["v0", "v1"], seed=1)
    cfg = _list_cfg(tmp_path, list_file=str(train_list), val_list_file=str(val_list))
    ds = build_datasets(cfg)
    assert [os.path.basename(i) for i, _ in ds["train"].files] == [f"t{i}.png" for i in range(4)]
    assert [os.path.basename(i) for i, _ in ds["val"].files] == ["v0.png", "v1.png"]
    out = train(cfg, log=lambda *a: None)
    assert out["metrics"]["pixels"] == 2 * 33 * 33  # evaluated on the 2 validation images
    # the same lists given through dataset_kwargs work too
    old = cfg.replace(
        list_file="",
        val_list_file="",
        dataset_kwargs={"num_classes": 3, "list_file": str(train_list),
                        "val_list_file": str(val_list)},
    )  # fmt: skip
    assert len(build_datasets(old)["val"]) == 2


def test_list_dataset_without_val_list_refuses_to_validate(tmp_path):
    from pspnet.data.loaders import build_datasets
    from pspnet.train import train

    train_list = _list_data(tmp_path / "data", ["t0", "t1"])
    for cfg in (
        _list_cfg(tmp_path, list_file=str(train_list)),
        _list_cfg(tmp_path, dataset_kwargs={"num_classes": 3, "list_file": str(train_list)}),
    ):
        with pytest.raises(ValueError, match="--val-list-file") as info:
            train(cfg, log=lambda *a: None)
        assert "never used for validation" in str(info.value)
        with pytest.raises(ValueError, match="--val-list-file"):
            build_datasets(cfg, splits=("val",))
    assert not (tmp_path / "run" / "last.pth").exists()  # refused before training
    # training without validation needs no validation list
    out = train(_list_cfg(tmp_path, list_file=str(train_list), final_eval=False), log=print)
    assert out["metrics"] is None and (tmp_path / "run" / "last.pth").is_file()


def test_list_file_flags_in_help_and_parsed(capsys):
    from pspnet.__main__ import build_parser
    from pspnet.cli_options import config_from_args

    args = build_parser().parse_args(
        ["train", "--dataset", "list", "--list-file", "a.txt", "--val-list-file", "b.txt"]
    )
    cfg = config_from_args(args)
    assert (cfg.list_file, cfg.val_list_file) == ("a.txt", "b.txt")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--val-list-file" in text and "the training list is never used" in text
    assert "--list-file" in text
    assert "--no-pretrained trains from scratch on purpose" in text


# --------------------------------------------------------------- pretrained backbone


@pytest.fixture
def no_backbone(tmp_path, monkeypatch):
    """No backbone file anywhere: empty $PSPNET_HOME, $HOME and working directory."""
    from pspnet import resnet

    monkeypatch.setenv("PSPNET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(resnet, "_WARNED", set())
    return tmp_path


def test_train_cli_refuses_real_data_without_backbone(no_backbone, capsys):
    from pspnet.__main__ import main

    data = str(no_backbone / "ade")
    for preset in ("ade20k", "cityscapes", "voc"):
        rc = main(["train", "--preset", preset, "--data-root", data, "--no-progress"])
        assert rc == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "resnet50_v2.pth" in err and "--no-pretrained" in err and "--backbone-path" in err
        assert os.path.join(str(no_backbone / "home"), "resnet50_v2.pth") in err
        assert os.path.join("initmodel", "resnet50_v2.pth") in err
    rc = main(["train", "--preset", "ade20k", "--layers", "101", "--data-root", data])
    assert rc == 2 and "resnet101_v2.pth" in capsys.readouterr().err
    # --no-pretrained (on purpose) and --backbone-path pass this check: the next error is the
    # missing dataset folder
    for flags in (["--no-pretrained"], ["--backbone-path", __file__]):
        rc = main(["train", "--preset", "ade20k", "--data-root", data, *flags])
        err = capsys.readouterr().err
        assert rc == 2 and "ADE20K: expected images" in err and "backbone" not in err


def test_synthetic_and_library_keep_the_warning(no_backbone):
    import warnings

    from pspnet import PSPNet
    from pspnet.config import Config
    from pspnet.session import require_backbone

    assert require_backbone(Config(dataset="synthetic", arch="pspnet", pretrained=True)) is None
    assert require_backbone(Config(preset="ade20k", dataset="ade20k", pretrained=False)) is None
    assert require_backbone(Config(dataset="ade20k", arch="tiny", pretrained=True)) is None
    with pytest.raises(FileNotFoundError, match="resnet50_v2.pth"):
        require_backbone(Config(dataset="list", arch="pspnet", pretrained=True))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        PSPNet(layers=50, classes=3, pretrained=True)  # the library: a warning, not an error
    assert any("resnet50_v2.pth" in str(w.message) for w in rec)


# ------------------------------------------------------------------ training plot


def tiny_cfg(tmp_path, **kw):
    """A seconds-long run: width-4 TinyPSPNet on 33x33 synthetic images, 3 classes."""
    from pspnet.config import Config

    base = dict(
        preset="synthetic", dataset="synthetic",
        dataset_kwargs={"size": 33, "length": 16, "num_classes": 3, "max_shapes": 2},
        arch="tiny", tiny_width=4, pretrained=False, crop_size=(33, 33), scale_min=0.9,
        scale_max=1.1, rotate_min=-5.0, rotate_max=5.0, blur=False, batch_size=4, epochs=1,
        max_iters_per_epoch=2, workers=0, progress=False, plot=False, final_eval=False,
        eval_every=0, val_batch_size=8, output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    base.update(kw)
    return Config.from_dict(base)


def test_matplotlib_is_a_dependency():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    deps = [
        d.split(">")[0].split("=")[0].split("<")[0].strip() for d in meta["project"]["dependencies"]
    ]
    assert "matplotlib" in deps


def test_plot_that_cannot_be_drawn_is_reported_once(tmp_path, monkeypatch):
    import sys

    from pspnet.train import train

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    lines = []
    train(tiny_cfg(tmp_path, epochs=2, max_iters_per_epoch=1, plot=True), log=lines.append)
    said = [line for line in lines if "curves.png" in line]
    assert len(said) == 1, lines
    assert "not drawn" in said[0] and "matplotlib" in said[0] and "\n" not in said[0]
    assert not (tmp_path / "run" / "curves.png").exists()
    monkeypatch.undo()
    lines.clear()
    train(tiny_cfg(tmp_path / "b", plot=True, max_iters_per_epoch=1), log=lines.append)
    assert (tmp_path / "b" / "run" / "curves.png").is_file()
    assert not [line for line in lines if "curves.png" in line]
    assert not list((tmp_path / "b" / "run").glob("*.tmp"))  # written atomically, no leftovers


# ------------------------------------------------------------------ data faults


def _corrupt(path, how):
    data = path.read_bytes()
    path.write_bytes(
        data[: len(data) // 3] if how == "truncate" else b"\x89PNG\r\n\x1a\n" + b"x" * 64
    )


def test_dataset_errors_name_file_and_index(tmp_path):
    from pspnet.data import ListDataset, build_dataset

    lst = _list_data(tmp_path, ["a", "b", "c", "d"])
    _corrupt(tmp_path / "img" / "c.png", "truncate")
    _corrupt(tmp_path / "lab" / "b.png", "garbage")
    ds = ListDataset(str(lst), num_classes=3)
    ds[0]
    with pytest.raises(ValueError, match=r"img.c\.png.*\(sample 2 of 4, .*line 3\)"):
        ds[2]
    with pytest.raises(ValueError, match=r"cannot read label .*lab.b\.png.*sample 1 of 4"):
        ds[1]
    (tmp_path / "img" / "d.png").unlink()  # vanished mid-run
    with pytest.raises(FileNotFoundError, match=r"d\.png.*sample 3 of 4"):
        ds[3]
    with pytest.raises(FileNotFoundError, match="line 4"):  # checked again at construction
        build_dataset("list", list_file=str(lst), num_classes=3)


# ------------------------------------------------------------------ failed writes


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pspnet.train import train

    root = tmp_path_factory.mktemp("ckpt")
    train(tiny_cfg(root, max_iters_per_epoch=1), log=lambda *a: None)
    return root / "run" / "last.pth"


def _half_then_fail(real):
    """A writer that writes part of the file, then fails (a full disk, a killed process)."""

    def writer(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    return writer


def test_failed_prediction_write_keeps_previous_png(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from pspnet.__main__ import main

    img = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
        img
    )
    out = tmp_path / "pred"
    assert main(["predict", str(img), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"scene_mask.png", "scene_overlay.png"}

    real_save = Image.Image.save

    def failing_save(self, fp, format=None, **params):
        def inner(obj, f, **kw):
            real_save(obj, f, format=format or "PNG", **kw)

        _half_then_fail(inner)(self, fp, **params)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    rc = main(["predict", str(img), "--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    assert rc == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "could not write" in err and "scene_mask.png" in err and "No space left" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # intact, no temp files


# ------------------------------------------------------------ non-finite losses


def _quiet(*a, **k):
    pass


def _poison_forward(monkeypatch, calls, how):
    """Make training forward call number ``calls`` (1-based, a set) non-finite: ``how`` is
    ``"aux"`` (aux_loss = NaN), ``"input"`` (NaN pixels: BatchNorm statistics spoilt too) or
    ``"grad"`` (a NaN gradient on cls.4.weight, finite losses)."""
    from pspnet.model import TinyPSPNet as Tiny

    real = Tiny.forward
    seen = {"n": 0, "ckpt": None}

    def forward(self, x, y=None):
        if not (self.training and y is not None):
            return real(self, x, y)
        seen["n"] += 1
        if seen["n"] not in calls:
            return real(self, x, y)
        last = self.__dict__.get("_test_out_dir")
        if last is not None and (last / "last.pth").exists():
            seen["ckpt"] = (last / "last.pth").read_bytes()
        if how == "input":
            x = x.clone()
            x[:, :, :4] = float("nan")
        if how == "grad":
            self.cls[4].weight.register_hook(lambda g: g * float("nan"))
        pred, main, aux = real(self, x, y)
        if how == "aux":
            aux = aux * float("nan")
        return pred, main, aux

    monkeypatch.setattr(Tiny, "forward", forward)
    return seen


def _remember_out_dir(monkeypatch, out_dir):
    import pspnet.session as T  # where the run's setup builds the model

    real = T.build_model

    def build(cfg, classes=None):
        m = real(cfg, classes)
        m._test_out_dir = out_dir
        return m

    monkeypatch.setattr(T, "build_model", build)


def _finite(model):
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values())


def test_nonfinite_loss_stops_naming_epoch_step_and_loss(tmp_path, monkeypatch):
    from pspnet.guard import NonFiniteError
    from pspnet.train import train

    cfg = tiny_cfg(tmp_path, epochs=2, max_iters_per_epoch=2)
    _remember_out_dir(monkeypatch, cfg.out_dir)
    seen = _poison_forward(monkeypatch, {3}, "aux")  # epoch 2, step 1
    with pytest.raises(NonFiniteError) as info:
        train(cfg, log=_quiet)
    msg = str(info.value)
    assert "aux_loss" in msg and "main_loss" in msg and "epoch 2, step 1 of 2" in msg
    assert "non-finite aux_loss (" in msg  # which loss: only aux
    assert "--max-bad-steps" in msg
    # the last good checkpoint (epoch 1) is kept as it was, with finite weights
    assert seen["ckpt"] is not None
    assert (cfg.out_dir / "last.pth").read_bytes() == seen["ckpt"]
    state = torch.load(cfg.out_dir / "last.pth", weights_only=True)
    assert state["epoch"] == 1
    assert all(
        bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point()
    )


def test_nonfinite_gradient_names_the_parameter(tmp_path, monkeypatch):
    from pspnet.guard import NonFiniteError
    from pspnet.train import train

    _poison_forward(monkeypatch, {2}, "grad")
    with pytest.raises(NonFiniteError, match=r"gradient of cls\.4\.weight.*epoch 1, step 2"):
        train(tiny_cfg(tmp_path, max_iters_per_epoch=3), log=_quiet)
    assert not (tmp_path / "run" / "last.pth").exists()  # nothing written from bad weights


def test_max_bad_steps_skips_and_counts(tmp_path, monkeypatch, capsys):
    from pspnet.__main__ import main
    from pspnet.guard import NonFiniteError
    from pspnet.train import train

    _poison_forward(monkeypatch, {2}, "input")  # NaN pixels: BatchNorm statistics too
    lines = []
    out = train(tiny_cfg(tmp_path, epochs=2, max_iters_per_epoch=2, max_bad_steps=1), lines.append)
    assert [r["bad_steps"] for r in out["history"]] == [1, 0]
    assert _finite(out["model"])  # the skipped forward's BatchNorm statistics were restored
    assert any("1 non-finite step(s) skipped" in line for line in lines), lines
    assert any("skipping the step at epoch 1, step 2" in line for line in lines), lines
    # one more than allowed stops, naming the limit
    _poison_forward(monkeypatch, {1, 2}, "input")
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 2.*--max-bad-steps 1 reached"):
        train(tiny_cfg(tmp_path / "b", max_bad_steps=1), log=_quiet)
    # the flag exists on the command line and the CLI reports the error
    monkeypatch.undo()
    _poison_forward(monkeypatch, {1}, "aux")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(tiny_cfg(tmp_path / "c").to_yaml())
    rc = main(["train", "--config", str(cfg_path), "--max-bad-steps", "0"])
    assert rc == 2 and "non-finite aux_loss" in capsys.readouterr().err


def test_gradscaler_skips_are_counted_not_errors(tmp_path):
    from pspnet.session import setup
    from pspnet.steps import guarded_step

    # aux_weight 1e3 and scale 2**127: the scaled loss and its gradients overflow (inf)
    run = setup(tiny_cfg(tmp_path, aux_weight=1e3), log=_quiet)
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    x, y = torch.randn(2, 3, 33, 33), torch.randint(0, 3, (2, 33, 33))
    before = {k: v.clone() for k, v in run.model.named_parameters()}
    run.net.train()
    _, _, status = guarded_step(run, x, y, 0, 0)
    assert status == "amp_skip" and run.bad_steps == 0  # normal under fp16: counted only
    assert all(torch.equal(before[k], v) for k, v in run.model.named_parameters())
    run.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    _, _, status = guarded_step(run, x, y, 0, 1)
    assert status == "ok"
    assert not all(torch.equal(before[k], v) for k, v in run.model.named_parameters())


def test_no_checkpoint_from_nonfinite_weights(tmp_path):
    from pspnet.guard import NonFiniteError
    from pspnet.session import setup
    from pspnet.train import save_epoch

    run = setup(tiny_cfg(tmp_path), log=_quiet)
    save_epoch(run, 0, {"epoch": 1, "loss": 1.0, "aux_loss": 1.0, "lr": 0.1})
    good = (run.out_dir / "last.pth").read_bytes()
    with torch.no_grad():
        run.model.cls[4].bias[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"not writing .*last\.pth.*cls\.4\.bias"):
        save_epoch(run, 0, {"epoch": 1, "loss": 1.0, "aux_loss": 1.0, "lr": 0.1})
    assert (run.out_dir / "last.pth").read_bytes() == good


# --------------------------------------------------------------------- preemption


def _states_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _losses(run_dir):
    import json

    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["iteration"], r["loss"], r["aux_loss"]) for r in rows]


PREEMPT = dict(epochs=2, max_iters_per_epoch=0, dropout=0.3, eval_every=1)  # 4 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same 2-epoch run, never stopped."""
    from pspnet.train import train

    root = tmp_path_factory.mktemp("straight")
    out = train(tiny_cfg(root, **PREEMPT), log=_quiet)
    return out["model"].state_dict(), _losses(root / "run"), out["metrics"]


def test_sigint_mid_epoch_saves_and_resumes_bit_identical(tmp_path, monkeypatch, uninterrupted):
    import signal

    import pspnet.steps as S
    import pspnet.train as T
    from pspnet.guard import TrainingInterrupted

    cfg = tiny_cfg(tmp_path, **PREEMPT)
    real = S.guarded_step
    calls = {"n": 0}

    def step(run, x, y, epoch, i):
        calls["n"] += 1
        if calls["n"] == 6:  # during epoch 2, step 2: Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return real(run, x, y, epoch, i)

    monkeypatch.setattr(S, "guarded_step", step)
    lines = []
    with pytest.raises(TrainingInterrupted) as info:
        T.train(cfg, log=lines.append)
    assert info.value.signum == signal.SIGINT
    assert "stopped by SIGINT at epoch 2, after step 2 of 4" in str(info.value)
    assert "--resume auto" in str(info.value)
    assert str(info.value) not in lines  # said once, by the exception (the CLI prints it)
    assert calls["n"] == 6  # the step in progress was finished, no further one began
    state = torch.load(cfg.out_dir / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and state["batches_done"] == 2 and state["iteration"] == 6
    monkeypatch.undo()
    torch.manual_seed(999)  # a new process would start from other RNG states
    out = T.train(cfg.replace(resume="auto"), log=_quiet)
    ref_state, ref_losses, ref_metrics = uninterrupted
    _states_equal(out["model"].state_dict(), ref_state)
    assert _losses(cfg.out_dir) == ref_losses
    assert out["metrics"]["mIoU"] == ref_metrics["mIoU"]


_DRIVER = """
import os, sys, time
import torch
from psp_kernels.ops import utils
utils.INTERPRETER = False  # the plain-torch paths, as the plain_torch_cpu fixture
torch.set_num_threads(1)
import pspnet.steps as S
from pspnet.__main__ import main
real, n = S.guarded_step, [0]
def step(*args):
    out = real(*args)
    n[0] += 1
    if n[0] == 5:
        open(sys.argv[2], "w").close()  # epoch 2 has begun: signal me now
    if n[0] >= 5:
        time.sleep(0.25)  # slow steps from here on, so that the signal lands mid-epoch
    return out
S.guarded_step = step
sys.exit(main(["train", "--config", sys.argv[1], "--no-progress"]))
"""


def test_sigterm_subprocess_mid_epoch_then_resume_auto(tmp_path, uninterrupted):
    import signal
    import subprocess
    import sys
    import time

    from pspnet.train import train

    cfg = tiny_cfg(tmp_path, **PREEMPT)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(cfg.to_yaml())
    marker = tmp_path / "epoch2"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(cfg_path), str(marker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached epoch 2"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "stopped by SIGTERM at epoch 2" in err and "--resume auto" in err, err
    assert err.count("stopped by SIGTERM") == 1 and "stopped by SIGTERM" not in out, (out, err)
    state = torch.load(cfg.out_dir / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and 1 <= state["batches_done"] < 4  # mid-epoch
    assert not list(cfg.out_dir.glob(".*.tmp"))
    res = train(cfg.replace(resume="auto"), log=_quiet)
    ref_state, ref_losses, _ = uninterrupted
    _states_equal(res["model"].state_dict(), ref_state)
    assert _losses(cfg.out_dir) == ref_losses


def test_second_sigint_interrupts_at_once():
    import signal

    from pspnet.guard import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_failed_checkpoint_write_keeps_previous_last_pth(tmp_path, monkeypatch, capsys):
    import pspnet.checkpoint as C
    from pspnet.__main__ import main
    from pspnet.train import train

    cfg = tiny_cfg(tmp_path, epochs=2, max_iters_per_epoch=1)
    train(cfg.replace(epochs=1), log=_quiet)
    good = (cfg.out_dir / "last.pth").read_bytes()
    monkeypatch.setattr(C.torch, "save", _half_then_fail(torch.save))
    with pytest.raises(OSError, match=r"could not write .*last\.pth.*No space left") as info:
        train(cfg.replace(resume="auto"), log=_quiet)
    assert "previous version of the file, if any, is unchanged" in str(info.value)
    assert (cfg.out_dir / "last.pth").read_bytes() == good  # intact
    assert not [p for p in cfg.out_dir.iterdir() if p.name.endswith(".tmp")]
    # the CLI reports it as an error naming the file
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(cfg.replace(resume="auto").to_yaml())
    assert main(["train", "--config", str(cfg_path)]) == 2
    assert "could not write" in capsys.readouterr().err
    monkeypatch.undo()
    # the epoch-2 row logged before the failed save is dropped on resume: one row per epoch
    out = train(cfg.replace(resume="auto"), log=_quiet)
    assert [r[0] for r in _losses(cfg.out_dir)] == [1, 2] and out["history"][0]["epoch"] == 2


def test_eval_json_and_metrics_log_written_atomically(tmp_path, monkeypatch):
    from pathlib import Path

    from pspnet.atomic import append_line_atomic, write_text_atomic
    from pspnet.train import train

    cfg = tiny_cfg(tmp_path, max_iters_per_epoch=1, final_eval=True)
    train(cfg, log=_quiet)
    files = {n: (cfg.out_dir / n).read_bytes() for n in ("eval.json", "metrics.jsonl")}
    real = Path.write_text

    def half(self, text, *a, **k):  # the disk fills up while these two files are written
        if not any(n in self.name for n in files):
            return real(self, text, *a, **k)
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OSError, match=r"could not write .*metrics\.jsonl"):
        train(cfg.replace(epochs=2, resume="auto"), log=_quiet)
    with pytest.raises(OSError, match=r"could not write .*eval\.json"):
        write_text_atomic(cfg.out_dir / "eval.json", "{}")
    with pytest.raises(OSError, match=r"metrics\.jsonl"):
        append_line_atomic(cfg.out_dir / "metrics.jsonl", "{}")
    monkeypatch.undo()
    assert {n: (cfg.out_dir / n).read_bytes() for n in files} == files
    assert not [p for p in cfg.out_dir.iterdir() if p.name.endswith(".tmp")]


# -------------------------------------------------------------------- too little data


def test_training_set_smaller_than_a_batch(tmp_path, capsys):
    from pspnet.__main__ import main
    from pspnet.train import train

    small = {"size": 33, "length": 3, "num_classes": 3, "max_shapes": 2}
    with pytest.raises(ValueError) as info:
        train(tiny_cfg(tmp_path, dataset_kwargs=small, batch_size=4), log=_quiet)
    msg = str(info.value)
    assert "3 sample(s)" in msg and "--batch-size 4" in msg and "drop_last" in msg
    assert "lower --batch-size to at most 3" in msg and "max_iter" not in msg
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(tiny_cfg(tmp_path, dataset_kwargs=small).to_yaml())
    assert main(["train", "--config", str(cfg_path), "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "3 sample(s)" in err and "--batch-size 8" in err


# ------------------------------------------------------------- data faults mid-run


def test_bad_sample_in_training_stops_or_is_skipped(tmp_path):
    from pspnet.train import train

    data = tmp_path / "data"
    train_list = _list_data(data, [f"t{i}" for i in range(6)])
    val_list = _list_data(data, ["v0", "v1", "v2"], seed=1)
    _corrupt(data / "img" / "t3.png", "truncate")
    _corrupt(data / "lab" / "v1.png", "garbage")
    cfg = _list_cfg(
        tmp_path, list_file=str(train_list), val_list_file=str(val_list), batch_size=2,
        max_iters_per_epoch=0, final_eval=False, epochs=2,
    )  # fmt: skip
    with pytest.raises(ValueError) as info:
        train(cfg, log=_quiet)
    msg = str(info.value)
    assert "t3.png" in msg and "sample 3 of 6" in msg and "--skip-bad-samples" in msg
    lines = []
    out = train(cfg.replace(skip_bad_samples=True, final_eval=True), log=lines.append)
    assert [r["skipped_samples"] for r in out["history"]] == [1, 1]  # counted each epoch
    assert len([ln for ln in lines if "skipping bad sample 3" in ln]) == 1  # logged once
    assert any("1 bad sample(s) skipped" in ln for ln in lines)  # in the epoch summary
    # validation: the corrupt label stops evaluation, or is left out of the metrics
    assert out["metrics"]["skipped_samples"] == 1
    assert out["metrics"]["pixels"] == 2 * 33 * 33
    assert any("skipping bad sample 1" in ln and "v1.png" in ln for ln in lines)
    clean = data / "clean.txt"
    clean.write_text("img/t0.png lab/t0.png\nimg/t1.png lab/t1.png\n")
    lines.clear()
    with pytest.raises(ValueError, match=r"v1\.png.*sample 1 of 3.*--skip-bad-samples"):
        train(
            cfg.replace(epochs=1, final_eval=True, list_file=str(clean), overwrite=True),
            log=lines.append,
        )
    assert any(ln.startswith("epoch 1:") for ln in lines)  # it was the evaluation that stopped


def test_eval_cli_bad_sample(tmp_path, capsys):
    from pspnet.__main__ import main
    from pspnet.train import train

    data = tmp_path / "data"
    train_list = _list_data(data, ["t0", "t1"])
    val_list = _list_data(data, ["v0", "v1"], seed=1)
    cfg = _list_cfg(tmp_path, list_file=str(train_list), val_list_file=str(val_list),
                    final_eval=False)  # fmt: skip
    train(cfg, log=_quiet)
    _corrupt(data / "img" / "v0.png", "garbage")
    ck = str(cfg.out_dir / "last.pth")
    assert main(["eval", "--checkpoint", ck, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "v0.png" in err and "sample 0 of 2" in err and "--skip-bad-samples" in err
    assert main(["eval", "--checkpoint", ck, "--no-progress", "--skip-bad-samples"]) == 0
    text = capsys.readouterr().out
    assert "skipping bad sample 0" in text and "v0.png" in text


def test_new_flags_in_help(capsys):
    from pspnet.__main__ import build_parser
    from pspnet.cli_options import config_from_args

    args = build_parser().parse_args(["train", "--max-bad-steps", "3", "--skip-bad-samples"])
    cfg = config_from_args(args)
    assert cfg.max_bad_steps == 3 and cfg.skip_bad_samples is True
    for cmd in ("train", "eval"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--skip-bad-samples" in text and "logged once" in text
    assert "--max-bad-steps" in text and "GradScaler skips are normal" in text
    assert "SIGINT / SIGTERM continues from mid-epoch" in text
    with pytest.raises(ValueError, match="max_bad_steps"):
        config_from_args(build_parser().parse_args(["train", "--max-bad-steps", "-1"]))
