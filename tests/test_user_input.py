"""Bad or unusual input, as a new user gives it: each case either works or stops with one line
that names the key, the file or the flag (and, where it matters, what was left on disk). Run
through ``python -m pspnet`` in a subprocess where a user meets it, through the API otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli_run import (
    list_pairs,
    make_checkpoint,
    one_error_line,
    run_cli,
    run_cli_each,
    train_words,
)

pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


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
    train_list.write_bytes("\r\n".join(list_pairs(data, ["t0", "t1"])).encode("utf-8-sig"))
    val_list.write_bytes("\r\n".join(list_pairs(data, ["v0"], seed=1)).encode("utf-16"))
    r = run_cli(*train_words(tmp_path / "run"), *list_words(data, train_list, val_list))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["pixels"] == 33 * 33


def test_a_list_file_in_another_encoding_names_the_file_and_line(tmp_path):
    data = tmp_path / "data"
    lines = list_pairs(data, ["t0", "t1"])
    lst = data / "train.txt"
    lst.write_bytes(lines[0].encode() + b"\n# caf\xe9 images\n" + lines[1].encode())  # latin-1
    r = run_cli(*train_words(tmp_path / "run"), *list_words(data, lst, lst))
    line = one_error_line(r, "train")
    assert str(lst) in line and "line 2" in line and "UTF-8" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ config values


CONFIG_ERRORS = [
    ('use_ppm: "false"\n', r"use_ppm: expected true or false, got 'false' \(a string\)"),
    ('epochs: "three"\n', r"epochs: expected an integer, got 'three' \(a string\)"),
    ('batch_size: "8"\n', r"batch_size: expected an integer, got '8' \(a string\)"),
    ("epochs: 2.5\n", r"epochs: expected an integer, got 2.5 \(a float\)"),
    ("seed: null\n", r"seed: expected an integer, got null"),
    ("scales: [1.0, big]\n", r"scales\[1\]: expected a number, got 'big' \(a string\)"),
    ("epochs: [3\n", r"line 2, column 1: not valid YAML"),
]


def test_config_file_values_are_type_checked(tmp_path):
    import re

    commands = []
    for i, (text, _) in enumerate(CONFIG_ERRORS):
        (tmp_path / f"c{i}.yaml").write_text(text)
        commands.append(["train", "--config", tmp_path / f"c{i}.yaml", "--output-dir", tmp_path])
    results = run_cli_each(*commands)  # one start-up for all: they stop before any work
    for i, ((_, expected), r) in enumerate(zip(CONFIG_ERRORS, results, strict=True)):
        line = one_error_line(r, "train")
        assert f"config file {tmp_path / f'c{i}.yaml'}" in line and re.search(expected, line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"c{i}.yaml" for i in range(7)]


def test_config_scalars_where_lists_are_expected():
    from pspnet.config import Config

    cfg = Config.from_dict({"scales": 1.0, "bins": 3, "crop_size": 65})
    assert (cfg.scales, cfg.bins, cfg.crop_size) == ((1.0,), (3,), (65, 65))
    cfg = Config.from_dict({"weight_decay": 1, "use_ppm": False})
    assert cfg.weight_decay == 1.0 and isinstance(cfg.weight_decay, float)
    with pytest.raises(ValueError, match=r"weight_decay: .*'1e-4'.*write 1.0e-4"):
        Config.from_dict({"weight_decay": "1e-4"})


def test_bad_flags_give_one_line(tmp_path):
    cases = [
        (["--device", "tpu"], "device 'tpu' is not a device torch knows: use auto, cpu, cuda"),
        (["--dataset-opt", "foo=1"], "dataset 'synthetic' takes no option 'foo'"),
        (["--dataset-opt", "num_classes=["], "--dataset-opt 'num_classes=[': VALUE"),
    ]
    results = run_cli_each(*(train_words(tmp_path / "run") + words for words, _ in cases))
    for (_, expected), r in zip(cases, results, strict=True):
        assert expected in one_error_line(r, "train")
    assert not (tmp_path / "run" / "last.pth").exists()


BAD_VALUES = [
    ("base_lr: .nan\n", "base_lr: expected a finite number, got nan"),
    ("base_lr: .inf\n", "base_lr: expected a finite number, got inf"),
    ("scales: [1.0, -.inf]\n", "scales[1]: expected a finite number, got -inf"),
    ("momentum: -1\n", "momentum must be >= 0, got -1.0"),
    ("weight_decay: -1\n", "weight_decay must be >= 0, got -1.0"),
    ("power: -1\n", "power must be > 0, got -1.0"),
    ("power: 0\n", "power must be > 0, got 0.0"),
    ("bins: []\n", "bins must be a non-empty list of positive ints, got []"),
    ("bins: [1, 0]\n", "bins must be a non-empty list of positive ints, got [1, 0]"),
    ("preset: [a]\n", "preset: expected a string, got ['a'] (a list)"),
    ("seed: -1\n", "seed must be in 0..2**63-1, got -1"),
    ("seed: 9223372036854775808\n", "seed must be in 0..2**63-1, got 9223372036854775808"),
    ("threads: 100000\n", "threads must be at most 4096, got 100000"),
]


def test_config_values_out_of_range_are_one_line_naming_the_key(tmp_path):
    commands = []
    for i, (text, _) in enumerate(BAD_VALUES):
        (tmp_path / f"c{i}.yaml").write_text(text)
        commands.append(["train", "--config", tmp_path / f"c{i}.yaml", "--output-dir", tmp_path])
    results = run_cli_each(*commands)
    for i, ((_, expected), r) in enumerate(zip(BAD_VALUES, results, strict=True)):
        line = one_error_line(r, "train")
        assert f"config file {tmp_path / f'c{i}.yaml'}" in line and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"c{i}.yaml" for i in range(len(BAD_VALUES))
    )


def test_bad_numbers_and_devices_on_the_command_line_give_one_line(tmp_path):
    ck = make_checkpoint(tmp_path / "ck.pth")
    run = train_words(tmp_path / "run")
    cases = [
        ("train", [*run, "--threads", "100000"], "threads must be at most 4096, got 100000"),
        ("train", [*run, "--scales", "inf"], "scales[0]: expected a finite number, got inf"),
        ("train", [*run, "--scales", "nan"], "scales[0]: expected a finite number, got nan"),
        ("train", [*run, "--device", "meta"], "device 'meta'"),
        ("eval", ["eval", "--checkpoint", ck, "--device", "meta"], "device 'meta'"),
        ("export", ["export", "--checkpoint", ck, "--out", tmp_path / "m.onnx", "--static", "0",
                    "0"], "example_size (--static) must be positive, got 0 x 0"),
    ]  # fmt: skip
    import torch

    for kind in ("mps", "xpu", "hpu", "mtia"):
        backend = getattr(torch, kind, None)
        if backend is not None and backend.is_available():
            continue  # this machine has one
        cases += [
            ("train", [*run, "--device", kind], f"device '{kind}' requested but {kind} is not"),
            ("predict", ["predict", ck, "--checkpoint", ck, "--out", tmp_path / "out", "--device",
                         kind], f"device '{kind}'"),
        ]  # fmt: skip
    results = run_cli_each(*(words for _, words, _ in cases))
    for (command, _, expected), r in zip(cases, results, strict=True):
        assert expected in one_error_line(r, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]


def test_a_scale_so_small_the_image_rounds_to_nothing_evaluates_on_one_pixel():
    from pspnet.evaluate import scaled_size

    assert scaled_size(33, 20, 0.001) == (1, 1)
    assert scaled_size(20, 33, 0.01) == (1, 1)
    assert scaled_size(33, 33, 1.0) == (33, 33)


def test_a_checkpoint_does_not_bring_the_device_or_threads_of_its_machine(tmp_path):
    import torch

    from pspnet.cli_options import config_from_args
    from pspnet.config import Config

    if torch.cuda.is_available():
        pytest.skip("the saved device cuda would work here")
    ck = make_checkpoint(
        tmp_path / "ck.pth", device="cuda", threads=3, workers=0, amp="bf16", compile=True
    )
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "a.png")
    ev, pr, pr_dev = run_cli_each(
        ["eval", "--checkpoint", ck],
        ["predict", tmp_path / "a.png", "--checkpoint", ck, "--out", tmp_path / "out"],
        ["predict", tmp_path / "a.png", "--checkpoint", ck, "--out", tmp_path / "out2",
         "--device", "cuda"],
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    assert pr.returncode == 0, pr.stderr
    assert (tmp_path / "out" / "a_mask.png").is_file()
    # asked for on the command line, the device is checked as before
    assert "CUDA is not available" in one_error_line(pr_dev, "predict")
    # the other saved runtime keys: the defaults, or the command line's
    from types import SimpleNamespace

    base = Config(device="cuda", threads=3, workers=5, amp="bf16", compile=True, seed=7)
    cfg = config_from_args(SimpleNamespace(threads=2), base=base)
    defaults = Config()
    got = (cfg.device, cfg.threads, cfg.workers, cfg.amp, cfg.compile)
    assert got == (defaults.device, 2, 5, defaults.amp, defaults.compile)
    assert cfg.seed == 7  # not a runtime key: the saved one (as are the DataLoader workers)


def test_eval_on_another_dataset_drops_the_saved_dataset_options(tmp_path):
    ck = make_checkpoint(tmp_path / "ck.pth")  # saved: synthetic with size, length...
    data = tmp_path / "data"
    (data / "val.txt").write_text("\n".join(list_pairs(data, ["v0", "v1"])) + "\n")
    other, same = run_cli_each(
        ["eval", "--checkpoint", ck, "--dataset", "list", "--val-list-file", data / "val.txt",
         "--data-root", data, "--dataset-opt", "num_classes=3"],
        # the same dataset keeps them (and takes more)
        ["eval", "--checkpoint", ck, "--dataset", "synthetic", "--dataset-opt", "length=2"],
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert same.returncode == 0, same.stderr


# ---------------------------------------------------------------------------- label values


def test_the_label_range_hints_lead_somewhere_that_works(tmp_path):
    data = tmp_path / "data"
    lst = data / "train.txt"
    lst.write_text("\n".join(list_pairs(data, ["t0", "t1"], label_max=7)) + "\n")
    words = train_words(tmp_path / "run") + list_words(data, lst, lst)
    hints = ["--dataset-opt num_classes=8", "--dataset-opt check_labels=false"]
    followed = [
        [*words, *h.split(), "--output-dir", tmp_path / f"run{i}"] for i, h in enumerate(hints)
    ]
    error, *results = run_cli_each(words, *followed)
    line = one_error_line(error, "train")
    assert "outside [0, 3)" in line and "t0.png" in line
    assert all(h in line for h in hints), line
    for i, r in enumerate(results):  # each hint, followed, trains and evaluates
        assert r.returncode == 0, r.stderr
        assert (tmp_path / f"run{i}" / "eval.json").is_file()


# ---------------------------------------------------------------------------------- images


def _grey16(path, size=(30, 20)):
    """A 16-bit greyscale PNG with values up to 65531 (Pillow mode I;16); returns the values."""
    values = np.linspace(0, 65531, size[0] * size[1]).reshape(size[1], size[0]).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    return values


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from pspnet.data import ListDataset, read_image

    values = _grey16(tmp_path / "deep.png")
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    img = read_image(tmp_path / "deep.png")
    assert img.shape == (3, 20, 30) and float(img.max()) == 255.0
    for c in range(3):
        assert np.array_equal(img[c].numpy(), expected)
    assert float((img == 255).float().mean()) < 0.01  # clipping made 99.6% of it white
    # a dataset reads it the same way
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "lab.png")
    (tmp_path / "l.txt").write_text("deep.png lab.png\n")
    assert np.array_equal(ListDataset(tmp_path / "l.txt", num_classes=2)[0][0], img)
    # images without a known 8-bit scale are refused, naming the file
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
    for name in ("wide.tif", "float.tif"):
        with pytest.raises(ValueError, match=rf"{name}: .*no known 8-bit scale"):
            read_image(tmp_path / name)


def test_predict_scales_a_16_bit_image(tmp_path):
    ck = make_checkpoint(tmp_path / "ck.pth")
    values = _grey16(tmp_path / "deep.png")
    r = run_cli("predict", tmp_path / "deep.png", "--checkpoint", ck, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    left = np.asarray(Image.open(tmp_path / "out" / "deep_overlay.png"))[:, :30]
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(left, np.repeat(expected[..., None], 3, axis=2))


def _bomb_png(path, width=20000, height=10000):
    """A PNG whose header claims width x height pixels (200 million, over Pillow's limit); its
    pixel data is missing."""
    import struct
    import zlib

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_an_image_over_the_pixel_limit_is_named_skipped_or_allowed(tmp_path):
    ck = make_checkpoint(tmp_path / "ck.pth")
    bomb = _bomb_png(tmp_path / "huge.png")
    data = tmp_path / "data"
    lines = list_pairs(data, ["t0", "t1", "t2"])
    _bomb_png(data / "img" / "t1.png", width=20000, height=33 * 400)
    lst = data / "train.txt"
    lst.write_text("\n".join(lines) + "\n")
    words = train_words(tmp_path / "run", "--batch-size", "3", "--no-final-eval")
    words += list_words(data, lst, lst)
    refused, allowed, stopped, skipped = run_cli_each(
        ["predict", bomb, "--checkpoint", ck, "--out", tmp_path / "out"],
        # with the limit raised, Pillow opens it (and finds its pixels missing)
        ["predict", bomb, "--checkpoint", ck, "--out", tmp_path / "out", "--max-image-pixels",
         "300000000"],
        # in training: it stops the run naming the file, or --skip-bad-samples skips it
        words,
        [*words, "--skip-bad-samples", "--overwrite"],
    )  # fmt: skip
    line = one_error_line(refused, "predict")
    assert str(bomb) in line and "decompression bomb" in line and "--max-image-pixels" in line
    line = one_error_line(allowed, "predict")
    assert str(bomb) in line and "decompression bomb" not in line
    assert not (tmp_path / "out").exists()
    line = one_error_line(stopped, "train")
    assert "t1.png" in line and "--skip-bad-samples" in line and "--max-image-pixels" in line
    assert skipped.returncode == 0, skipped.stderr
    assert "skipping bad sample 1" in skipped.stdout
    assert "1 bad sample(s) skipped" in skipped.stdout


def test_the_pixel_limit_can_be_lowered_and_raised(tmp_path):
    from pspnet.data import read_image
    from pspnet.data.files import set_max_image_pixels

    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    try:
        set_max_image_pixels(1000)
        with pytest.raises(ValueError, match="img.png.*decompression bomb"):
            read_image(tmp_path / "img.png")
        set_max_image_pixels(1200)  # exactly its size
        assert read_image(tmp_path / "img.png").shape == (3, 30, 40)
    finally:
        set_max_image_pixels(0)
