"""No command destroys a user's earlier work: a run folder is not written over, prediction names
do not collide, exports and checkpoints are replaced atomically (a full disk included), files get
the user's permissions, leftovers of a killed save are cleaned up. Through ``python -m pspnet``
in a subprocess where a user meets it (exit status, the one-line message, the files afterwards),
through the API otherwise."""

from __future__ import annotations

import json

import pytest

from tests.cli_run import SMALL_SYNTHETIC, one_error_line, run_cli, train_words

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
