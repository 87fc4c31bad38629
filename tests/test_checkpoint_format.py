"""Checkpoint files: the format pspnet writes (``format_version``) and the older layouts it
reads; reading a damaged or hostile file (checked from its bytes, nothing in it run), and torch's
error messages understood as a fallback."""

from __future__ import annotations

import os
import pickle
import struct
import sys
import zipfile

import pytest
import torch

from pspnet.build import model_from_checkpoint, saved_config
from pspnet.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_training_state,
    read_checkpoint,
    save_checkpoint,
)
from pspnet.config import Config
from pspnet.errors import UserError
from pspnet.model import TinyPSPNet
from pspnet.safe_load import core_reason, damaged_tensor, explain_load_error, safe_load
from tests.cli_run import one_error_line, run_cli

pytestmark = pytest.mark.usefixtures("plain_torch_cpu")

TINY = dict(
    preset="synthetic", dataset="synthetic", arch="tiny", tiny_width=4, classes=3,
    pretrained=False, crop_size=(33, 33), workers=0, progress=False, plot=False,
    dataset_kwargs={"size": 33, "length": 4, "num_classes": 3, "max_shapes": 2},
    val_batch_size=4, batch_size=2, epochs=1,
)  # fmt: skip


def _tiny():
    return TinyPSPNet(classes=3, width=4)


@pytest.fixture
def checkpoint(tmp_path):
    """A training checkpoint of the tiny model with its config (eval-able from the CLI)."""
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "ck.pth"
    save_checkpoint(path, model, opt, epoch=1, cfg=Config.from_dict(TINY), class_names="abc")
    return path, model


# ------------------------------------------------------------------------------ the format


def test_written_checkpoints_carry_the_format_version(checkpoint):
    path, model = checkpoint
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert raw["class_names"] == ["a", "b", "c"] and raw["batches_done"] == 0
    ckpt = read_checkpoint(path)
    assert ckpt.format_version == 2 and ckpt.epoch == 1 and ckpt.config["classes"] == 3
    assert ckpt.partial is None and ckpt.bad_steps == 0
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.state_dict()[k], v), k


def _old_layout(model, cfg):
    """A checkpoint as pspnet wrote it before the format had a version key."""
    from pspnet.optim import build_optimizer
    from pspnet.runtime import rng_state

    opt, sched = build_optimizer(model, cfg, max_iter=2)

    return {
        "model": model.state_dict(),
        "epoch": 1,
        "iteration": 0,
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "class_names": ["a", "b", "c"],
        "bad_steps": 0,
    }


def test_checkpoints_without_a_version_keep_loading(tmp_path):
    from pspnet.train import train

    cfg = Config.from_dict(dict(TINY, max_iters_per_epoch=1, final_eval=False))
    model = _tiny()
    old = tmp_path / "old.pth"
    torch.save(_old_layout(model, cfg), old)
    ckpt = read_checkpoint(old)
    assert ckpt.format_version == 1 and ckpt.epoch == 1 and ckpt.class_names == ["a", "b", "c"]
    loaded, cfg2, names = model_from_checkpoint(old)
    assert cfg2.tiny_width == 4 and names == ["a", "b", "c"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert saved_config(old) == cfg
    assert load_training_state(old, _tiny())["epoch"] == 1
    # resuming from it trains on (epoch 2 of 2) and writes the current format
    out = train(cfg.replace(epochs=2, resume=str(old), output_dir=str(tmp_path / "run")), print)
    assert [r["epoch"] for r in out["history"]] == [2]
    assert read_checkpoint(tmp_path / "run" / "last.pth").format_version == FORMAT_VERSION


def test_official_checkpoints_load(tmp_path):
    model = _tiny()
    path = tmp_path / "train_epoch_50.pth"
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 50, "state_dict": sd, "optimizer": {}}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format_version == 0 and ckpt.config is None and ckpt.class_names is None
    loaded = load_checkpoint(_tiny(), path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert saved_config(path) is None


def test_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pth"
    torch.save({"format_version": 99, "model": _tiny().state_dict(), "epoch": 1}, path)
    with pytest.raises(UserError, match=r"newer pspnet \(checkpoint format 99; this one reads"):
        read_checkpoint(path)


# ------------------------------------------------------------------ damaged and hostile files


def _record_data_offset(path, record: str) -> tuple[int, int]:
    """``(offset of the record's data in the file, its size)`` (a stored zip record)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(record)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = struct.unpack("<4s5H3I2H", f.read(30))
    return info.header_offset + 30 + header[9] + header[10], info.file_size


def _record_of(path, tensor: str) -> str:
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if "/data/" in name and damaged_tensor(z, name) == tensor:
                return name
    raise AssertionError(f"no record holds {tensor}")


def test_damage_in_the_middle_names_the_tensor(checkpoint):
    path, _ = checkpoint
    record = _record_of(path, "model/cls.0.weight")
    start, size = _record_data_offset(path, record)
    data = bytearray(path.read_bytes())
    data[start + size // 2 : start + size // 2 + 4] = b"\x00\x11\x22\x33"  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        load_checkpoint(_tiny(), path)
    msg = str(info.value)
    assert "tensor model/cls.0.weight" in msg and "CRC-32 checksum" in msg and record in msg
    # the command line says the same in one line, and evaluates nothing
    r = run_cli("eval", "--checkpoint", path, "--no-progress")
    line = one_error_line(r, "eval")
    assert "model/cls.0.weight" in line and "checksum" in line and "mIoU" not in r.stdout


_CANARY = """
import pathlib
pathlib.Path(__file__).with_suffix(".imported").touch()
class Thing:
    pass
def run(*args):
    pathlib.Path(__file__).with_suffix(".ran").touch()
"""


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A module that records being imported (``.imported``) or its ``run`` called (``.ran``)."""
    mod = tmp_path / "pspnet_canary_mod.py"
    mod.write_text(_CANARY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import pspnet_canary_mod

    yield pspnet_canary_mod, mod
    sys.modules.pop("pspnet_canary_mod", None)


@pytest.mark.parametrize("legacy", [False, True])
def test_loading_never_imports_or_runs_what_the_file_names(tmp_path, canary, legacy):
    mod, mod_path = canary
    path = tmp_path / "hostile.pth"
    obj = {"model": _tiny().state_dict(), "epoch": 1, "a": mod.Thing(), "b": _Evil(mod.run, 1)}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    sys.modules.pop("pspnet_canary_mod")
    mod_path.with_suffix(".imported").unlink()
    for load in (
        lambda: load_checkpoint(_tiny(), path),
        lambda: model_from_checkpoint(path),
        lambda: saved_config(path),
    ):
        with pytest.raises(UserError, match="holds code or Python objects") as info:
            load()
        assert "pspnet_canary_mod." in str(info.value) and "weights_only=False" in str(info.value)
        assert "pspnet_canary_mod" not in sys.modules
        assert not mod_path.with_suffix(".imported").exists()
        assert not mod_path.with_suffix(".ran").exists()


def test_malicious_checkpoint_cli_says_it_was_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save({"model": _tiny().state_dict(), "x": _Evil(os.system, f"touch {marker}")}, path)
    r = run_cli("eval", "--checkpoint", path)
    line = one_error_line(r, "eval")
    assert "holds code or Python objects" in line and "system" in line
    assert "nothing in it was imported or run" in line and "truncated" not in line
    assert not marker.exists()


def test_a_directory_as_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    torch.save(_tiny().state_dict(), tmp_path / "run" / "last.pth")
    r = run_cli("eval", "--checkpoint", tmp_path / "run")
    line = one_error_line(r, "eval")
    assert "is a directory" in line and "last.pth" in line and "not found" not in line
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(_tiny(), tmp_path)


# ------------------------------------------------------- torch's messages, read as a fallback


def test_fallback_reads_torch_messages_of_refused_globals(tmp_path):
    old = pickle.UnpicklingError(
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
        "will likely succeed, but it can result in arbitrary code execution.\n"
        "Please file an issue with the following so that we can make `weights_only=True` "
        "compatible with your use case: WeightsUnpickler error: Unsupported global: GLOBAL "
        "mymod.MyClass was not an allowed global by default."
    )
    new = pickle.UnpicklingError(
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the "
        "`weights_only` argument.\n\n\nTrying to load unsupported GLOBAL posix.system whose "
        "module posix is blocked."
    )
    for e, name in ((old, "mymod.MyClass"), (new, "posix.system")):
        err = explain_load_error(e, "f.pth", 10, weights_only=True)
        assert isinstance(err, UserError) and "holds code or Python objects" in str(err)
        assert f"({name})" in str(err)
        # without weights_only the same text is not about refused objects
        assert "truncated or corrupt" in str(explain_load_error(e, "f.pth", 10, False))


def test_fallback_keeps_the_first_sentence_of_torch_errors():
    e = pickle.UnpicklingError(
        "Weights only load failed. Advice.\n\nPlease file an issue: WeightsUnpickler error: "
        "\x1b[1mUnsupported operand 149\x1b[0m. More text.\n\nCheck the documentation."
    )
    assert core_reason(e) == "Unsupported operand 149."
    assert core_reason(RuntimeError("PytorchStreamReader failed reading zip archive: failed "
                                    "finding central directory. More.")) == (
        "PytorchStreamReader failed reading zip archive: failed finding central directory."
    )  # fmt: skip
    assert core_reason(EOFError()) == "EOFError"
    err = explain_load_error(ModuleNotFoundError("No module named 'x'"), "f.pth", 3, True)
    assert "needs a Python module that is not installed" in str(err)


def test_a_real_legacy_file_with_objects_goes_through_the_fallback(tmp_path, canary):
    """The static scan covers zip files; a legacy file's objects are refused by torch.load,
    whose message the fallback reads (and nothing is imported)."""
    mod, _ = canary
    path = tmp_path / "legacy.pth"
    torch.save({"a": mod.Thing()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match=r"holds code or Python objects .*pspnet_canary_mod"):
        safe_load(path)
