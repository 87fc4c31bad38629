"""Training / evaluation configuration: a dataclass, YAML presets and command-line overrides.

Resolution order (later wins): dataclass defaults -> preset (``--preset``, or ``preset:`` in the
YAML file) -> YAML file (``--config x.yaml``) -> command-line ``--key value`` overrides.

The presets are the YAML files in ``pspnet/configs/`` (their one home: :data:`PRESETS` is read
from them). They follow the official hszhao/semseg PSPNet configs (ADE20K, Cityscapes, VOC2012);
the ``synthetic`` preset (the default) trains a small PSPNet on the built-in synthetic dataset in
a couple of minutes on two CPU cores.

Every value is type-checked when a Config is made (a quoted ``"false"``, a string for a number, a
float epoch count, ``null`` for the seed are refused, naming the key, the file and the value).
The command line that sets these fields is :mod:`pspnet.cli_options`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

__all__ = [
    "Config",
    "CONFIG_DIR",
    "PRESETS",
    "preset_config",
    "load_config",
    "parse_yaml",
]


@dataclass
class Config:
    """Every setting of training and evaluation (see ``python -m pspnet train --help``)."""

    # --- what to train on
    preset: str = "synthetic"
    dataset: str = "synthetic"  # synthetic | ade20k | cityscapes | voc | list
    data_root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    dataset_kwargs: dict = field(default_factory=dict)  # extra build_dataset(**kw), YAML only
    list_file: str = ""  # dataset=list: the training list ("image label" per line)
    val_list_file: str = ""  # dataset=list: the validation list (never the training list)
    classes: int = 0  # 0: take it from the dataset
    ignore_index: int = 255

    # --- model (pspnet.model.PSPNet arguments)
    arch: str = "pspnet"  # pspnet (official ResNet-50/101/152) | tiny (narrow ResNet, CPU runs)
    layers: int = 50
    bins: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    zoom_factor: int = 8
    use_ppm: bool = True
    pretrained: bool = True
    backbone_path: str | None = None
    aux_weight: float = 0.4
    tiny_width: int = 16  # arch=tiny: channels of the first ResNet stage
    head: str = ""  # PSPNet head: "" (the model's default) | concat | concat_free

    # --- augmentation (official train transform)
    crop_size: tuple[int, int] = (473, 473)
    scale_min: float = 0.5
    scale_max: float = 2.0
    rotate_min: float = -10.0
    rotate_max: float = 10.0
    blur: bool = True
    flip: bool = True

    # --- optimisation (official: SGD, poly schedule, 10x LR on ppm/cls/aux)
    epochs: int = 100
    batch_size: int = 16  # total over all processes, as the official configs
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    head_lr_mult: float = 10.0
    max_iters_per_epoch: int = 0  # 0: the whole epoch (a limit for smoke runs)

    # --- runtime
    workers: int = 4
    seed: int = 0
    output_dir: str = ""  # "": runs/<preset>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch (0: torch's default)
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: trace only)
    amp: str = "none"  # none | bf16 | fp16 (CUDA only; fp16 uses a GradScaler)
    channels_last: bool = False
    resume: str = ""  # "" | auto | path/to/last.pth
    save_freq: int = 1
    max_bad_steps: int = 0  # steps with a non-finite loss / gradient skipped before stopping
    skip_bad_samples: bool = False  # skip (log once, count) unreadable images / labels
    max_image_pixels: int = 0  # largest image read, in pixels (0: Pillow's limit, ~179 million)
    overwrite: bool = False  # train into an output folder that holds another run, replacing it
    progress: bool = True
    plot: bool = True

    # --- evaluation
    eval_every: int = 0  # evaluate every N epochs during training (0: never)
    final_eval: bool = True  # evaluate on val_split after training
    val_batch_size: int = 1
    scales: tuple[float, ...] = (1.0,)
    eval_flip: bool = False
    eval_mode: str = "whole"  # whole | slide
    base_size: int = 0  # multi-scale: long side = scale * base_size (0: the image's long side)
    stride_rate: float = 2.0 / 3.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> Config:
        """Check every field's type, then ranges; normalise (lists to tuples, a single number to a
        one-element ``bins`` / ``scales`` or a square ``crop_size``). Raises
        :class:`~pspnet.errors.UserError` naming the field, its value and what was expected."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(f.name, getattr(self, f.name), f.type))
        cs = self.crop_size
        self.crop_size = (cs[0], cs[0]) if len(cs) == 1 else cs
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise UserError(f"crop_size must be one or two positive ints, got {list(cs)}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                listed = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
                raise UserError(f"{name} must be {listed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "val_batch_size", "save_freq"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("base_lr", "power"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.bins or min(self.bins) < 1:
            bins = list(self.bins)
            raise UserError(f"bins must be a non-empty list of positive ints, got {bins}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be in 0..2**63-1, got {self.seed}")
        if self.threads > MAX_THREADS:
            raise UserError(f"threads must be at most {MAX_THREADS}, got {self.threads}")
        if not self.scales or min(self.scales) <= 0:
            raise UserError(f"scales must be positive, got {list(self.scales)}")
        if not 0 < self.stride_rate <= 1:
            raise UserError(f"stride_rate must be in (0, 1], got {self.stride_rate}")
        _check_device(self.device)
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.preset}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML (the layout of the preset files)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Config | None = None) -> Config:
        """A Config from ``base`` (or the defaults) with the keys of ``d`` replaced."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(unknown)}")
        values = (base or cls()).to_dict()
        values.update(copy.deepcopy(d))
        return cls(**values)

    def replace(self, **kw) -> Config:
        return Config.from_dict(kw, base=self)


# ------------------------------------------------------------------------------------ types

_CHOICES = {
    "amp": ("none", "bf16", "fp16"),
    "eval_mode": ("whole", "slide"),
    "arch": ("pspnet", "tiny"),
    "zoom_factor": (1, 2, 4, 8),
}
#: the largest ``seed`` (torch.manual_seed takes 64 bits; the run's RNG states are int64)
MAX_SEED = 2**63 - 1
#: the most CPU threads (``threads``) asked of torch: far above any machine's cores, below the
#: counts at which OpenMP fails to start its threads (100000 crashes the process)
MAX_THREADS = 4096
_NON_NEGATIVE = (
    "threads", "workers", "max_iters_per_epoch", "eval_every", "max_bad_steps", "max_image_pixels",
    "base_size", "classes", "momentum", "weight_decay",
)  # fmt: skip


def _shown(value) -> str:
    """A value as a YAML file shows it, and what it is."""
    if value is None:
        return "null"
    kind = {bool: "a boolean", str: "a string", int: "an integer", float: "a float"}
    what = kind.get(type(value), f"a {type(value).__name__}")
    return f"{value!r} ({what})"


def _scalar(name: str, value, kind: str):
    """``value`` checked against one scalar type (``bool``, ``int``, ``float``, ``str``)."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise UserError(f"{name}: expected a finite number, got {value}")
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    expected = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(
        kind, "a string"
    )
    hint = ""
    if kind in ("int", "float") and isinstance(value, str):
        hint = "; write the number without quotes"
        if kind == "float" and _is_number(value):
            hint += " (YAML reads a number like 1e-4 as a string: write 1.0e-4)"
    elif kind == "int" and isinstance(value, float):
        hint = "; a whole number is expected"
    elif kind == "bool" and isinstance(value, str):
        hint = "; write true or false without quotes"
    raise UserError(f"{name}: expected {expected}, got {_shown(value)}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _typed(name: str, value, annotation: str):
    """``value`` of field ``name`` checked against its annotation (a string: this module uses
    postponed annotations) and normalised."""
    kind = annotation.replace(" ", "")
    if kind == "str|None":
        return None if value is None else _scalar(name, value, "str")
    if kind == "dict":
        if not isinstance(value, dict):
            raise UserError(f"{name}: expected a mapping (key: value lines), got {_shown(value)}")
        return value
    if kind.startswith("tuple["):
        item = kind[len("tuple[") :].split(",")[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # a single number
        if not isinstance(value, (list, tuple)):
            raise UserError(
                f"{name}: expected a list of {'integers' if item == 'int' else 'numbers'}, got "
                f"{_shown(value)}"
            )
        return tuple(_scalar(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    return _scalar(name, value, kind)


def _check_device(spec: str) -> None:
    if spec == "auto":
        return
    import torch

    try:
        torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(
            f"device {spec!r} is not a device torch knows: use auto, cpu, cuda or cuda:N"
        ) from None


# ---------------------------------------------------------------------------------- presets

#: the preset files: ``<name>.yaml`` is preset ``name``
CONFIG_DIR = Path(__file__).resolve().with_name("configs")


def parse_yaml(text: str | bytes, where: str):
    """``yaml.safe_load(text)``; broken YAML raises :class:`~pspnet.errors.UserError` naming
    ``where``, the line and the column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}{at}: not valid YAML ({problem})") from None


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"config file {p} is a directory")
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    data = parse_yaml(p.read_bytes(), f"config file {p}") or {}  # bytes: BOMs are understood
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


@contextlib.contextmanager
def _from(source: str):
    """Prefix the :class:`~pspnet.errors.UserError` of a config read from ``source``."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


#: preset name -> its YAML mapping, read from :data:`CONFIG_DIR`
PRESETS: dict[str, dict[str, Any]] = {
    p.stem: _read_yaml(p) for p in sorted(CONFIG_DIR.glob("*.yaml"))
}


def preset_config(name: str) -> Config:
    """The Config of a preset (``synthetic``, ``ade20k``, ``cityscapes``, ``voc``)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    with _from(f"preset {CONFIG_DIR / (name + '.yaml')}"):
        return Config.from_dict(dict(PRESETS[name], preset=name))


def load_config(path: str | Path | None = None, preset: str | None = None, **overrides) -> Config:
    """Defaults -> preset -> YAML file ``path`` -> ``overrides``."""
    data = _read_yaml(path) if path is not None else {}
    name = preset or data.get("preset") or "synthetic"
    if not isinstance(name, str):
        with _from(f"config file {path}") if path is not None else contextlib.nullcontext():
            _scalar("preset", name, "str")
    data["preset"] = name
    base = preset_config(name)
    with _from(f"config file {path}") if path is not None else contextlib.nullcontext():
        cfg = Config.from_dict(data, base=base)
    return cfg.replace(**overrides) if overrides else cfg
