"""Training / evaluation configuration: a dataclass, YAML presets and command-line overrides.

Resolution order (later wins): dataclass defaults -> preset (``--preset``, or ``preset:`` in the
YAML file) -> YAML file (``--config x.yaml``) -> command-line ``--key value`` overrides.

The presets are the YAML files in ``pspnet/configs/`` (their one home: :data:`PRESETS` is read
from them). They follow the official hszhao/semseg PSPNet configs (ADE20K, Cityscapes, VOC2012);
the ``synthetic`` preset (the default) trains a small PSPNet on the built-in synthetic dataset in
a couple of minutes on two CPU cores.

The command line is a plain argparse parser (:func:`add_config_arguments`) whose options default
to "not given", so that what is given overrides the preset / YAML file, or the config saved in a
checkpoint (:func:`config_from_args`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
    "add_config_arguments",
    "config_from_args",
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
        """Check ranges and normalise types; raises ValueError naming the bad field."""
        self.bins = tuple(int(b) for b in self.bins)
        self.scales = tuple(float(s) for s in self.scales)
        cs = self.crop_size
        if isinstance(cs, int):
            cs = (cs, cs)
        cs = tuple(int(c) for c in cs)
        if len(cs) == 1:
            cs = (cs[0], cs[0])
        self.crop_size = cs
        if len(cs) != 2 or min(cs) < 1:
            raise UserError(f"crop_size must be one or two positive ints, got {self.crop_size}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise UserError(f"amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.eval_mode not in ("whole", "slide"):
            raise UserError(f"eval_mode must be whole or slide, got {self.eval_mode!r}")
        if self.arch not in ("pspnet", "tiny"):
            raise UserError(f"arch must be pspnet or tiny, got {self.arch!r}")
        for name in ("epochs", "batch_size", "val_batch_size", "zoom_factor", "save_freq"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.zoom_factor not in (1, 2, 4, 8):
            raise UserError(f"zoom_factor must be 1, 2, 4 or 8, got {self.zoom_factor}")
        if (
            self.threads < 0
            or self.workers < 0
            or self.max_iters_per_epoch < 0
            or self.eval_every < 0
            or self.max_bad_steps < 0
        ):
            raise UserError(
                "threads, workers, max_iters_per_epoch, eval_every and max_bad_steps must be >= 0"
            )
        if self.base_lr <= 0:
            raise UserError(f"base_lr must be > 0, got {self.base_lr}")
        if not self.scales or min(self.scales) <= 0:
            raise UserError(f"scales must be positive, got {self.scales}")
        if not 0 < self.stride_rate <= 1:
            raise UserError(f"stride_rate must be in (0, 1], got {self.stride_rate}")
        if not isinstance(self.dataset_kwargs, dict):
            raise UserError("dataset_kwargs must be a mapping")
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


# ---------------------------------------------------------------------------------- presets

#: the preset files: ``<name>.yaml`` is preset ``name``
CONFIG_DIR = Path(__file__).resolve().with_name("configs")


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    with open(p) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


#: preset name -> its YAML mapping, read from :data:`CONFIG_DIR`
PRESETS: dict[str, dict[str, Any]] = {
    p.stem: _read_yaml(p) for p in sorted(CONFIG_DIR.glob("*.yaml"))
}


def preset_config(name: str) -> Config:
    """The Config of a preset (``synthetic``, ``ade20k``, ``cityscapes``, ``voc``)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config.from_dict(dict(PRESETS[name], preset=name))


def load_config(path: str | Path | None = None, preset: str | None = None, **overrides) -> Config:
    """Defaults -> preset -> YAML file ``path`` -> ``overrides``."""
    data = _read_yaml(path) if path is not None else {}
    name = preset or data.get("preset") or "synthetic"
    data["preset"] = name
    cfg = Config.from_dict(data, base=preset_config(name))
    return cfg.replace(**overrides) if overrides else cfg


# ----------------------------------------------------------------------------- command line


def _none_or_str(s: str) -> str | None:
    return None if s.lower() in ("none", "null", "") else s


_none_or_str.__name__ = "str"

# --help text of the options that need more than a line
HELP = {
    "list_file": "--dataset list: the training list file, one 'image_path label_path' per line "
    "(paths relative to --data-root, default the list's folder)",
    "val_list_file": "--dataset list: the validation list file; required to validate "
    "(--eval-every, --final-eval, eval), the training list is never used in its place",
    "pretrained": "load the ImageNet backbone (resnet{layers}_v2.pth from --backbone-path, "
    "$PSPNET_HOME, ~/.cache/pspnet/ or ./initmodel/); training a real-data preset refuses to "
    "start without it, --no-pretrained trains from scratch on purpose",
    "backbone_path": "the ImageNet backbone file (implies --pretrained)",
    "max_bad_steps": "how many training steps with a non-finite loss or gradient may be "
    "skipped (not applied, counted in the epoch summary) before training stops with an error "
    "(default 0: stop at the first); fp16 GradScaler skips are normal and only counted",
    "skip_bad_samples": "skip an unreadable or corrupt image / label met during training or "
    "evaluation (each logged once, counted in the epoch summary) instead of stopping with an "
    "error naming the file and its index",
    "resume": "continue a run: auto (<output-dir>/last.pth, if any) or a checkpoint path; a run "
    "stopped by SIGINT / SIGTERM continues from mid-epoch exactly as if never stopped",
}

_INTS, _FLOATS = (int, "+"), (float, "+")

# one option per Config field but ``preset`` (its own option) and ``dataset_kwargs``
# (``--dataset-opt``): (field, type, help); the option is ``--field-name`` (also ``--field_name``),
# ``--x / --no-x`` for booleans. Every option defaults to "not given".
OPTIONS: tuple[tuple[str, Any, str | None], ...] = (
    # what to train on
    ("dataset", str, "synthetic | ade20k | cityscapes | voc | list"),
    ("data_root", _none_or_str, "dataset folder"),
    ("train_split", str, "training split"),
    ("val_split", str, "validation split"),
    ("list_file", str, HELP["list_file"]),
    ("val_list_file", str, HELP["val_list_file"]),
    ("classes", int, "number of classes (0: the dataset's)"),
    ("ignore_index", int, "label value ignored by the loss and the metrics"),
    # model
    ("arch", str, "pspnet (ResNet-50/101/152 backbone) | tiny (narrow ResNet, CPU runs)"),
    ("layers", int, "ResNet depth of arch pspnet: 50 | 101 | 152"),
    ("bins", _INTS, "pyramid pooling bin sizes"),
    ("dropout", float, "dropout before the classifiers"),
    ("zoom_factor", int, "output resolution relative to the stride-8 features: 1 | 2 | 4 | 8"),
    ("use_ppm", bool, "use the pyramid pooling module"),
    ("pretrained", bool, HELP["pretrained"]),
    ("backbone_path", _none_or_str, HELP["backbone_path"]),
    ("aux_weight", float, "weight of the auxiliary loss"),
    ("tiny_width", int, "arch tiny: channels of the first ResNet stage"),
    ("head", str, "'' (the model's default) | concat | concat_free"),
    # augmentation
    ("crop_size", _INTS, "training crop (and sliding window), H [W]"),
    ("scale_min", float, "random scale, lower bound"),
    ("scale_max", float, "random scale, upper bound"),
    ("rotate_min", float, "random rotation in degrees, lower bound"),
    ("rotate_max", float, "random rotation in degrees, upper bound"),
    ("blur", bool, "random Gaussian blur"),
    ("flip", bool, "random horizontal flip"),
    # optimisation
    ("epochs", int, "training epochs"),
    ("batch_size", int, "images per step, over all processes"),
    ("base_lr", float, "learning rate of the backbone"),
    ("momentum", float, "SGD momentum"),
    ("weight_decay", float, "SGD weight decay"),
    ("power", float, "poly schedule power"),
    ("head_lr_mult", float, "learning-rate multiplier of ppm / cls / aux"),
    ("max_iters_per_epoch", int, "limit the steps per epoch (0: the whole epoch)"),
    # runtime
    ("workers", int, "data loader workers"),
    ("seed", int, "random seed"),
    ("output_dir", str, "where to write (default: runs/<preset>)"),
    ("device", str, "auto | cpu | cuda | cuda:N"),
    ("threads", int, "CPU threads for torch (0: torch's default)"),
    ("compile", bool, "torch.compile the model"),
    ("compile_backend", str, "torch.compile backend (aot_eager: trace only)"),
    ("amp", str, "none | bf16 | fp16 (CUDA only)"),
    ("channels_last", bool, "channels_last memory format"),
    ("resume", str, HELP["resume"]),
    ("save_freq", int, "write last.pth every N epochs"),
    ("max_bad_steps", int, HELP["max_bad_steps"]),
    ("skip_bad_samples", bool, HELP["skip_bad_samples"]),
    ("progress", bool, "progress bars"),
    ("plot", bool, "draw curves.png"),
    # evaluation
    ("eval_every", int, "evaluate every N epochs during training (0: at the end only)"),
    ("final_eval", bool, "evaluate on val_split after training"),
    ("val_batch_size", int, "images per evaluation batch"),
    ("scales", _FLOATS, "evaluation scales (multi-scale: several)"),
    ("eval_flip", bool, "average with the flipped image"),
    ("eval_mode", str, "whole | slide"),
    ("base_size", int, "multi-scale: long side = scale * base_size (0: the image's)"),
    ("stride_rate", float, "sliding-window stride, relative to the crop"),
)
_NAMES = frozenset(name for name, _, _ in OPTIONS)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    fields: set[str] | None = None,
    exclude: set[str] = frozenset(),
) -> None:
    """Add ``--preset``, ``--config`` and the options of :data:`OPTIONS` (default: not given).

    ``fields``: only these fields; ``exclude``: not these."""
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="config preset")
    parser.add_argument("--config", default=None, metavar="YAML", help="YAML config file")
    if fields is None or "dataset_kwargs" in fields:
        parser.add_argument(
            "--dataset-opt",
            action="append",
            default=None,
            metavar="KEY=VALUE",
            help="extra build_dataset keyword (repeatable; VALUE parsed as YAML), e.g. "
            "--dataset-opt list_file=train.txt --dataset-opt num_classes=5",
        )
    group = parser.add_argument_group("config overrides (default: from preset / YAML)")
    for name, kind, help_ in OPTIONS:
        if name in exclude or (fields is not None and name not in fields):
            continue
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
            continue
        kind, nargs = kind if isinstance(kind, tuple) else (kind, None)
        names = [flag] if "_" not in name else [flag, "--" + name]
        group.add_argument(
            *names,
            dest=name,
            type=kind,
            nargs=nargs,
            default=None,
            metavar=name.upper(),
            help=help_,
        )


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Build the Config from parsed arguments (see :func:`add_config_arguments`).

    ``base`` (e.g. the config saved in a checkpoint) replaces defaults + preset + YAML when
    neither ``--preset`` nor ``--config`` was given; command-line overrides apply on top.
    """
    overrides = {k: v for k, v in vars(args).items() if k in _NAMES and v is not None}
    preset, path = getattr(args, "preset", None), getattr(args, "config", None)
    if base is not None and preset is None and path is None:
        cfg = base.replace(**overrides)
    else:
        cfg = load_config(path, preset, **overrides)
    opts = getattr(args, "dataset_opt", None)
    if opts:
        kw = dict(cfg.dataset_kwargs)
        for item in opts:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UserError(f"--dataset-opt expects KEY=VALUE, got {item!r}")
            kw[key.strip()] = yaml.safe_load(value)
        cfg = cfg.replace(dataset_kwargs=kw)
    return cfg
