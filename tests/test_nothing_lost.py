"""No command destroys a user's earlier work: a run folder is not written over, prediction names
do not collide, exports and checkpoints are replaced atomically (a full disk included), files get
the user's permissions, leftovers of a killed save are cleaned up. Through ``python -m pspnet``
in a subprocess where a user meets it (exit status, the one-line message, the files afterwards),
through the API otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cli_run import SMALL_SYNTHETIC, one_error_line, run_cli, run_cli_each, train_words

pytestmark = pytest.mark.usefixtures("plain_torch_cpu")

RUN = ("last.pth", "metrics.jsonl", "eval.json", "config.yaml")


def _files(folder, names=RUN) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


# ------------------------------------------------------------------------------ run folders


def test_a_folder_holding_a_run_is_refused_resumed_or_overwritten_on_purpose(tmp_path):
    out = tmp_path / "run"
    first = run_cli(*train_words(out, *SMALL_SYNTHETIC))
    assert first.returncode == 0, first.stderr
    before = _files(out)
    assert set(before) == set(RUN)
    # the same command again: refused before anything is written, naming both ways on
    again = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--seed", "1"))
    line = one_error_line(again, "train")
    assert str(out) in line and "--resume auto" in line and "--overwrite" in line
    assert _files(out) == before
    # --resume auto continues that run
    more = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--resume", "auto", "--epochs", "2"))
    assert more.returncode == 0, more.stderr
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    # --overwrite starts over: the old run's files are gone first, and it says so
    new = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--seed", "1", "--overwrite"))
    assert new.returncode == 0, new.stderr
    assert "--overwrite: deleted the previous run's" in new.stdout
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]
    assert "seed: 1" in (out / "config.yaml").read_text()


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """A finished one-epoch run folder (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("one_run") / "run"
    r = run_cli(*train_words(out, *SMALL_SYNTHETIC))
    assert r.returncode == 0, r.stderr
    return out


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_resuming_another_runs_checkpoint_does_not_write_over_this_folder(one_run, tmp_path):
    """``--resume PATH`` continues the folder's run only when PATH is its own last.pth."""
    other = _copy_run(one_run, tmp_path / "A")
    out = tmp_path / "C"
    first = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--epochs", "2", "--seed", "5"))
    assert first.returncode == 0, first.stderr
    before = _files(out)
    r = run_cli(
        *train_words(out, *SMALL_SYNTHETIC, "--resume", other / "last.pth", "--epochs", "3")
    )
    line = one_error_line(r, "train")
    assert str(out) in line and "--overwrite" in line and "--output-dir" in line
    assert str(other / "last.pth") in line
    assert _files(out) == before
    # the folder's own last.pth, however spelled, continues it
    own = tmp_path / "C" / ".." / "C" / "last.pth"
    more = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--resume", own, "--epochs", "3"))
    assert more.returncode == 0, more.stderr
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]
    # another run's checkpoint into a new folder: allowed (the new folder holds no run)
    new = run_cli(*train_words(tmp_path / "D", *SMALL_SYNTHETIC, "--resume", other / "last.pth",
                                "--epochs", "2"))  # fmt: skip
    assert new.returncode == 0, new.stderr
    rows = (tmp_path / "D" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [2]
    # --overwrite with another run's checkpoint: this folder's old run is deleted, not mixed in
    over = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--resume", other / "last.pth",
                                 "--epochs", "2", "--overwrite"))  # fmt: skip
    assert over.returncode == 0, over.stderr
    assert "--overwrite: deleted the previous run's" in over.stdout
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [2]


def test_a_run_without_its_last_pth_is_not_resumed_from_scratch(one_run, tmp_path):
    """A folder that holds a run but no last.pth: ``--resume auto`` is refused rather than
    starting over (which would delete the old metrics), and the refusal of a plain run does not
    recommend it."""
    out = _copy_run(one_run, tmp_path / "run")
    (out / "last.pth").unlink()
    before = _files(out)
    plain, auto = run_cli_each(
        train_words(out, *SMALL_SYNTHETIC), train_words(out, *SMALL_SYNTHETIC, "--resume", "auto")
    )
    for r in (plain, auto):
        line = one_error_line(r, "train")
        assert str(out) in line and "no last.pth" in line and "--overwrite" in line, line
        assert "--resume auto" not in line
    assert "starting from scratch" not in auto.stdout
    assert _files(out) == before


def test_two_trainings_never_share_a_folder(one_run, tmp_path):
    """While a training holds the folder's lock, another one is refused before it touches any
    file there (a leftover temporary file included)."""
    import fcntl
    import os

    out = _copy_run(one_run, tmp_path / "run")
    stale = out / ".last.pth.k2j4x9q1.tmp"
    stale.write_bytes(b"the other training's save in flight")
    before = _files(out, RUN + (stale.name,))
    fd = os.open(out / ".pspnet.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--resume", "auto", "--epochs", "2"))
    finally:
        os.close(fd)
    line = one_error_line(r, "train")
    assert f"another training is using {out}" in line
    assert _files(out, RUN + (stale.name,)) == before
    # once it is released, the folder can be continued; the lock file is not left behind
    r = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--resume", "auto", "--epochs", "2"))
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and not (out / ".pspnet.lock").exists()


@pytest.mark.parametrize(
    "damage", [b'{"epoch": 3, "loss": 0.1', b"\xff\n"], ids=["truncated", "not-utf8"]
)
def test_a_damaged_metrics_log_is_named_not_a_traceback(one_run, tmp_path, damage):
    out = _copy_run(one_run, tmp_path / "run")
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(damage)
    before = _files(out)
    r = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--resume", "auto", "--epochs", "2"))
    line = one_error_line(r, "train")
    assert f"{out / 'metrics.jsonl'} line 2 is not a metrics row" in line
    assert "--overwrite" in line
    assert _files(out) == before
    # the curves reader reports it in one line instead of raising
    from pspnet.plotting import draw_curves

    why = draw_curves(out / "metrics.jsonl", tmp_path / "curves.png")
    if "matplotlib cannot be imported" not in (why or ""):
        assert "line 2 is not a metrics row" in why
        assert not (tmp_path / "curves.png").exists()


def test_stale_temporary_files_of_a_killed_save_are_removed(tmp_path):
    from pspnet.config import Config
    from pspnet.train import train

    cfg = Config.from_dict(
        dict(
            arch="tiny", tiny_width=4, pretrained=False, crop_size=(33, 33), batch_size=2,
            epochs=1, max_iters_per_epoch=1, workers=0, progress=False, plot=False,
            final_eval=False, output_dir=str(tmp_path / "run"),
            dataset_kwargs={"size": 33, "length": 4, "num_classes": 3, "max_shapes": 2},
        )
    )  # fmt: skip
    train(cfg, log=lambda *a: None)
    # what a save killed mid-write leaves (atomic_path's temporary name), and a file of the user's
    stale = [cfg.out_dir / ".last.pth.k2j4x9q1.tmp", cfg.out_dir / ".metrics.jsonl.a8b7c6d5.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    mine = cfg.out_dir / ".notes.tmp"
    mine.write_text("keep me")
    lines = []
    train(cfg.replace(epochs=2, resume="auto"), log=lines.append)
    assert not any(p.exists() for p in stale) and mine.exists()
    said = [ln for ln in lines if "temporary file(s)" in ln]
    assert len(said) == 1 and ".last.pth.k2j4x9q1.tmp" in said[0], lines


def test_validating_does_not_change_what_is_trained(tmp_path):
    """Evaluating every epoch or never: the same losses, the same weights (dropout draws from
    the global RNG; validation must not consume its stream)."""
    from pspnet.config import Config
    from pspnet.train import train

    runs = {}
    for every in (0, 1):
        cfg = Config.from_dict(
            dict(
                arch="tiny", tiny_width=4, pretrained=False, crop_size=(33, 33), batch_size=2,
                epochs=3, max_iters_per_epoch=1, workers=0, progress=False, plot=False,
                dropout=0.3, final_eval=False, eval_every=every, val_batch_size=4,
                output_dir=str(tmp_path / f"every{every}"),
                dataset_kwargs={"size": 33, "length": 4, "num_classes": 3, "max_shapes": 2},
            )
        )  # fmt: skip
        runs[every] = train(cfg, log=lambda *a: None)
    assert "val_mIoU" in runs[1]["history"][0] and "val_mIoU" not in runs[0]["history"][0]
    assert [r["loss"] for r in runs[0]["history"]] == [r["loss"] for r in runs[1]["history"]]
    for k, v in runs[0]["model"].state_dict().items():
        assert torch.equal(v, runs[1]["model"].state_dict()[k]), k


def test_a_temporary_folder_left_by_a_killed_export_does_not_block_the_next(tmp_path):
    from tests.cli_run import make_checkpoint

    pytest.importorskip("onnxscript")
    ck = make_checkpoint(tmp_path / "ck.pth")
    out = tmp_path / "out"
    left = out / ".m.onnx.x1y2z3.tmp"  # as tempfile.mkdtemp names the folder of a large export
    left.mkdir(parents=True)
    (left / "m.onnx").write_bytes(b"partial")
    (left / "m.onnx.data").write_bytes(b"partial")
    r = run_cli("export", "--checkpoint", ck, "--out", out / "m.onnx", "--static", "33", "33")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"]


def test_stale_temporaries_that_cannot_be_removed_are_left(tmp_path, monkeypatch):
    import shutil

    from pspnet.atomic import remove_stale_temps

    (tmp_path / ".a.png.1.tmp").mkdir()
    (tmp_path / ".a.png.2.tmp").write_bytes(b"x")

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    assert remove_stale_temps(tmp_path, ["a.png"]) == [tmp_path / ".a.png.2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.png.1.tmp"]


# ------------------------------------------------------------------------------ predictions


def _rgb(path, seed, size=(24, 20)):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_prediction_names_are_unique_over_the_call(tmp_path):
    import numpy as np
    from PIL import Image

    from tests.cli_run import make_checkpoint

    ck = make_checkpoint(tmp_path / "ck.pth")
    inputs = [tmp_path / "d1" / "x.png", tmp_path / "d2" / "x.png", tmp_path / "x_1.png"]
    arrays = [_rgb(p, seed) for seed, p in enumerate(inputs)]
    r = run_cli("predict", *inputs, "--checkpoint", ck, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    written = r.stdout.split()
    assert len(written) == len(set(written)) == 6
    for stem, arr in zip(("x", "x_2", "x_1"), arrays, strict=True):
        overlay = np.asarray(Image.open(tmp_path / "out" / f"{stem}_overlay.png"))
        assert np.array_equal(overlay[:, :24], arr), stem  # each output is its own input's


def test_predict_checks_its_options_before_writing(tmp_path):
    from tests.cli_run import make_checkpoint

    ck = make_checkpoint(tmp_path / "ck.pth")
    _rgb(tmp_path / "a.png", 0)
    r = run_cli("predict", tmp_path / "a.png", "--checkpoint", ck, "--out", tmp_path / "out",
                "--alpha", "2")  # fmt: skip
    assert "alpha (--alpha) must be in [0, 1], got 2.0" in one_error_line(r, "predict")
    assert not (tmp_path / "out").exists()


def test_predict_refuses_to_write_over_an_input_of_the_call(tmp_path):
    from tests.cli_run import make_checkpoint

    ck = make_checkpoint(tmp_path / "ck.pth")
    d = tmp_path / "d"
    _rgb(d / "a.png", 0)
    _rgb(d / "a_mask.png", 1)
    before = (d / "a_mask.png").read_bytes()
    # the output folder named another way: the check compares resolved paths
    r = run_cli("predict", d / "a.png", d / "a_mask.png", "--checkpoint", ck,
                "--out", tmp_path / "d" / ".." / "d")  # fmt: skip
    line = one_error_line(r, "predict")
    assert "a_mask.png would overwrite the input image" in line and str(d / "a_mask.png") in line
    assert (d / "a_mask.png").read_bytes() == before
    assert sorted(p.name for p in d.iterdir()) == ["a.png", "a_mask.png"]


# ------------------------------------------------------------------ files written atomically


def test_files_get_the_permissions_of_the_umask_or_of_the_file_they_replace(tmp_path):
    import os
    import stat

    from pspnet.atomic import write_text_atomic

    old = os.umask(0o027)
    try:
        new = write_text_atomic(tmp_path / "new.txt", "a")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640  # not mkstemp's 0600
        os.umask(0o022)
        assert stat.S_IMODE(write_text_atomic(tmp_path / "b.txt", "b").stat().st_mode) == 0o644
        (tmp_path / "kept.txt").write_text("old")
        os.chmod(tmp_path / "kept.txt", 0o604)
        write_text_atomic(tmp_path / "kept.txt", "new")
        assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o604
    finally:
        os.umask(old)


def test_a_full_disk_is_named_as_such(tmp_path):
    """An injected ENOSPC (where no small file system can be mounted) and torch's own writer
    error, which loses the errno, both say that the disk is full and where."""
    import errno

    from pspnet.atomic import write_atomic

    (tmp_path / "f").write_text("previous")

    def enospc(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"could not write .*f: the disk is full \(No space left"):
        write_atomic(tmp_path / "f", enospc)
    assert (tmp_path / "f").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]

    def bug(tmp):
        raise TypeError("a bug in the writer")

    with pytest.raises(TypeError, match="a bug"):  # not dressed up as a disk error
        write_atomic(tmp_path / "f", bug)


# ---------------------------------------------------------------------- a small, full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where mounting is not allowed (the injected-ENOSPC
    test above then covers the message)."""
    import os
    import subprocess

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "none", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk, leave: int) -> None:
    """Take the disk's free space but ``leave`` bytes."""
    import os

    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def test_training_on_a_full_disk_says_so(small_disk, tmp_path):
    out = small_disk / "run"
    _fill(small_disk, leave=160 * 1024)  # room for config.yaml and the log, not for last.pth
    r = run_cli(*train_words(out, *SMALL_SYNTHETIC, "--no-final-eval"))
    line = one_error_line(r, "train")
    assert f"could not write {out / 'last.pth'}: the disk is full" in line
    assert f"free on the file system of {out}" in line and "unexpected pos" not in line
    assert not (out / "last.pth").exists() and not _leftovers(small_disk)


def test_export_is_atomic_and_checked_before_tracing(small_disk, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    import onnx

    from pspnet.export import export_checkpoint
    from tests.cli_run import make_checkpoint

    ck = make_checkpoint(tmp_path / "ck.pth")
    model = small_disk / "m.onnx"
    export_checkpoint(ck, model, static=(33, 33))  # a fixed size: traced in seconds
    good = model.read_bytes()
    _fill(small_disk, leave=len(good) // 3)
    r = run_cli("export", "--checkpoint", ck, "--out", model, "--static", "33", "33")
    line = one_error_line(r, "export")
    assert f"could not write {model}: the disk is full" in line
    assert model.read_bytes() == good and not _leftovers(small_disk)
    onnx.checker.check_model(onnx.load(str(model)))  # the previous model, whole
    # a path that cannot be written is refused before the model is traced
    (tmp_path / "afile").write_text("")
    r = run_cli("export", "--checkpoint", ck, "--out", tmp_path / "afile" / "m.onnx")
    assert "afile is a file, not a folder" in one_error_line(r, "export")
    import torch

    def never(*a, **k):
        raise AssertionError("traced before the output path was checked")

    monkeypatch.setattr(torch.onnx, "export", never)
    with pytest.raises(NotADirectoryError):
        export_checkpoint(ck, tmp_path / "afile" / "m.onnx")
