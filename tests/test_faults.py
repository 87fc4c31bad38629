"""Faults and bad input (issue 14): checkpoint files that are not, or not for this model."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from pspnet.checkpoint import load_checkpoint
from pspnet.train import TinyPSPNet, load_training_state, model_from_checkpoint

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
