"""Running ``python -m pspnet`` in a subprocess, as a user does: the exit status, what is printed
and the files left behind are what the tests check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the plain-PyTorch paths on CPU and one thread, as the in-process tests (conftest.plain_torch_cpu)
_PRELUDE = (
    "import sys, torch; torch.set_num_threads(1); "
    "from psp_kernels.ops import utils; utils.INTERPRETER = False; "
    "from pspnet.__main__ import main; "
)


def run_cli(*args, cwd=None, timeout: float = 300, code: str = "", env: dict | None = None):
    """``python -m pspnet ARGS`` in a subprocess; returns the ``CompletedProcess`` (text output).

    ``code``: Python run first in the child (e.g. to inject a fault), after the prelude that
    imports ``main``."""
    words = [str(a) for a in args]
    script = _PRELUDE + code + f"\nsys.exit(main({words!r}))"
    full_env = dict(
        os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_EACH = """
import contextlib, io, json, traceback
results = []
for words in COMMANDS:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(words)
        except SystemExit as e:
            rc = e.code
        except BaseException:
            traceback.print_exc()
            rc = 1
    results.append([rc, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(results))
sys.exit(0)
"""


def run_cli_each(*commands, timeout: float = 300) -> list:
    """``main(words)`` for each command, one after the other in one subprocess (one start-up for
    many quick input errors): a ``CompletedProcess``-like result per command (``returncode``:
    what ``main`` returned, 1 for an exception it let through; ``stdout``, ``stderr``)."""
    import json
    from types import SimpleNamespace

    lists = [[str(a) for a in words] for words in commands]
    r = run_cli(code=f"COMMANDS = {lists!r}\n" + _EACH, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return [SimpleNamespace(returncode=rc, stdout=o, stderr=e) for rc, o, e in json.loads(r.stdout)]


def one_error_line(result, command: str) -> str:
    """The single ``pspnet COMMAND: error: ...`` line of a run that failed on bad input (exit 2,
    no traceback); returns the message."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"pspnet {command}: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


#: ``--dataset-opt`` flags of a small synthetic dataset: 4 images of 33x33, 3 classes
SMALL_SYNTHETIC = [
    "--dataset-opt", "size=33", "--dataset-opt", "length=4", "--dataset-opt", "num_classes=3",
    "--dataset-opt", "max_shapes=2",
]  # fmt: skip


def train_words(out_dir, *extra) -> list[str]:
    """``train`` flags of a seconds-long run into ``out_dir``: the width-4 tiny model, 33x33
    crops, one step, a final evaluation; ``extra`` flags come last."""
    return [
        "train", "--arch", "tiny", "--tiny-width", "4", "--no-pretrained", "--crop-size", "33",
        "--batch-size", "2", "--epochs", "1", "--max-iters-per-epoch", "1", "--workers", "0",
        "--no-progress", "--no-plot", "--eval-every", "0", "--val-batch-size", "2",
        "--scale-min", "1", "--scale-max", "1", "--no-blur", "--threads", "1",
        "--output-dir", str(out_dir), *extra,
    ]  # fmt: skip


def make_checkpoint(path, **saved):
    """A training checkpoint of the width-4 tiny model (3 classes, untrained) whose config
    evaluates on a small synthetic set: what ``eval`` / ``predict`` / ``export`` need, in a
    fraction of a second. ``saved``: other values of its saved config (e.g. the device of the
    machine it was trained on)."""
    from pspnet.checkpoint import save_checkpoint
    from pspnet.config import Config
    from pspnet.model import TinyPSPNet

    cfg = Config.from_dict(
        {
            **dict(
                arch="tiny", tiny_width=4, classes=3, pretrained=False, crop_size=(33, 33),
                workers=0, progress=False, val_batch_size=4,
                dataset_kwargs={"size": 33, "length": 4, "num_classes": 3, "max_shapes": 2},
            ),
            **saved,
        }
    )  # fmt: skip
    save_checkpoint(path, TinyPSPNet(classes=3, width=4).eval(), epoch=1, cfg=cfg)
    return path


def list_pairs(root, names, size=33, classes=3, seed=0, label_max=None) -> list[str]:
    """Random PNG image / label pairs ``root/img/NAME.png``, ``root/lab/NAME.png`` (labels below
    ``classes``, or up to ``label_max``); returns the list-file lines naming them."""
    import numpy as np
    from PIL import Image

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
