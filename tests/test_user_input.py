"""Bad or unusual input, as a new user gives it: each case either works or stops with one line
that names the key, the file or the flag (and, where it matters, what was left on disk). Run
through ``python -m pspnet`` in a subprocess where a user meets it, through the API otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli_run import one_error_line, run_cli, train_words

pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


def _list_data(root, names, size=33, classes=3, seed=0, label_max=None) -> list[str]:
    """PNG image / label pairs under ``root``; returns the list lines naming them."""
    g = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "lab").mkdir(parents=True, exist_ok=True)
    lines = []
    for n in names:
        Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / "img" / f"{n}.png"
        )
        hi = classes if label_max is None else label_max + 1
        Image.fromarray(g.integers(0, hi, (size, size), dtype=np.uint8)).save(
            root / "lab" / f"{n}.png"
        )
        lines.append(f"img/{n}.png lab/{n}.png")
    return lines


def list_words(root, train_list, val_list):
    return [
        "--dataset", "list", "--data-root", str(root), "--list-file", str(train_list),
        "--val-list-file", str(val_list), "--dataset-opt", "num_classes=3",
    ]  # fmt: skip


# ------------------------------------------------------------------------------ list files


def test_list_files_with_a_byte_order_mark_or_utf16_are_read(tmp_path):
    data = tmp_path / "data"
    train_list, val_list = data / "train.txt", data / "val.txt"
    # as Windows Notepad saves them: UTF-8 with a byte-order mark, and "Unicode" (UTF-16 LE)
    train_list.write_bytes("\r\n".join(_list_data(data, ["t0", "t1"])).encode("utf-8-sig"))
    val_list.write_bytes("\r\n".join(_list_data(data, ["v0"], seed=1)).encode("utf-16"))
    r = run_cli(*train_words(tmp_path / "run"), *list_words(data, train_list, val_list))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["pixels"] == 33 * 33


def test_a_list_file_in_another_encoding_names_the_file_and_line(tmp_path):
    data = tmp_path / "data"
    lines = _list_data(data, ["t0", "t1"])
    lst = data / "train.txt"
    lst.write_bytes(lines[0].encode() + b"\n# caf\xe9 images\n" + lines[1].encode())  # latin-1
    r = run_cli(*train_words(tmp_path / "run"), *list_words(data, lst, lst))
    line = one_error_line(r, "train")
    assert str(lst) in line and "line 2" in line and "UTF-8" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ config values


@pytest.mark.parametrize(
    "text, expected",
    [
        ('use_ppm: "false"\n', r"use_ppm: expected true or false, got 'false' \(a string\)"),
        ('epochs: "three"\n', r"epochs: expected an integer, got 'three' \(a string\)"),
        ('batch_size: "8"\n', r"batch_size: expected an integer, got '8' \(a string\)"),
        ("epochs: 2.5\n", r"epochs: expected an integer, got 2.5 \(a float\)"),
        ("seed: null\n", r"seed: expected an integer, got null"),
        ("scales: [1.0, big]\n", r"scales\[1\]: expected a number, got 'big' \(a string\)"),
        ("epochs: [3\n", r"line 2, column 1: not valid YAML"),
    ],
)
def test_config_file_values_are_type_checked(tmp_path, text, expected):
    import re

    path = tmp_path / "my.yaml"
    path.write_text(text)
    r = run_cli("train", "--config", path, "--output-dir", tmp_path / "run")
    line = one_error_line(r, "train")
    assert f"config file {path}" in line and re.search(expected, line), line
    assert not (tmp_path / "run").exists()


def test_config_scalars_where_lists_are_expected():
    from pspnet.config import Config

    cfg = Config.from_dict({"scales": 1.0, "bins": 3, "crop_size": 65})
    assert (cfg.scales, cfg.bins, cfg.crop_size) == ((1.0,), (3,), (65, 65))
    cfg = Config.from_dict({"weight_decay": 1, "use_ppm": False})
    assert cfg.weight_decay == 1.0 and isinstance(cfg.weight_decay, float)
    with pytest.raises(ValueError, match=r"weight_decay: .*'1e-4'.*write 1.0e-4"):
        Config.from_dict({"weight_decay": "1e-4"})


@pytest.mark.parametrize(
    "words, expected",
    [
        (["--device", "tpu"], "device 'tpu' is not a device torch knows: use auto, cpu, cuda"),
        (["--dataset-opt", "foo=1"], "dataset 'synthetic' takes no option 'foo'"),
        (["--dataset-opt", "num_classes=["], "--dataset-opt 'num_classes=[': VALUE"),
    ],
)
def test_bad_flags_give_one_line(tmp_path, words, expected):
    r = run_cli(*train_words(tmp_path / "run"), *words)
    assert expected in one_error_line(r, "train")
    assert not (tmp_path / "run" / "last.pth").exists()
