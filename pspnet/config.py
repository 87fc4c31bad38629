"""Training / evaluation configuration: a dataclass, presets, YAML files and command-line overrides.

Resolution order (later wins): dataclass defaults -> preset (``--preset``, or ``preset:`` in the
YAML file) -> YAML file (``--config x.yaml``) -> command-line ``--key value`` overrides.

The presets follow the official hszhao/semseg PSPNet configs (ADE20K, Cityscapes, VOC2012); the
``synthetic`` preset (the default) trains a small PSPNet on the built-in synthetic dataset in a
couple of minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.datasets import DATASETS

__all__ = [
    "Config",
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
            raise ValueError(f"crop_size must be one or two positive ints, got {self.crop_size}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode must be whole or slide, got {self.eval_mode!r}")
        if self.arch not in ("pspnet", "tiny"):
            raise ValueError(f"arch must be pspnet or tiny, got {self.arch!r}")
        for name in ("epochs", "batch_size", "val_batch_size", "zoom_factor", "save_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.zoom_factor not in (1, 2, 4, 8):
            raise ValueError(f"zoom_factor must be 1, 2, 4 or 8, got {self.zoom_factor}")
        if (
            self.threads < 0
            or self.workers < 0
            or self.max_iters_per_epoch < 0
            or self.eval_every < 0
            or self.max_bad_steps < 0
        ):
            raise ValueError(
                "threads, workers, max_iters_per_epoch, eval_every and max_bad_steps must be >= 0"
            )
        if self.base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive, got {self.scales}")
        if not 0 < self.stride_rate <= 1:
            raise ValueError(f"stride_rate must be in (0, 1], got {self.stride_rate}")
        if not isinstance(self.dataset_kwargs, dict):
            raise ValueError("dataset_kwargs must be a mapping")
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
        """:meth:`to_dict` as YAML (JSON when PyYAML is missing)."""
        try:
            import yaml

            return yaml.safe_dump(self.to_dict(), sort_keys=False)
        except ImportError:  # pragma: no cover
            import json

            return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Config | None = None) -> Config:
        """A Config from ``base`` (or the defaults) with the keys of ``d`` replaced."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        values = (base or cls()).to_dict()
        values.update(copy.deepcopy(d))
        return cls(**values)

    def replace(self, **kw) -> Config:
        return Config.from_dict(kw, base=self)


def _dataset_facts(name: str) -> dict[str, Any]:
    """Classes, crop and test base size of a dataset, from :data:`pspnet.data.DATASETS`."""
    facts = DATASETS[name]
    crop = facts["crop_size"]
    return dict(classes=facts["classes"], crop_size=(crop, crop), base_size=facts["base_size"])


# Official hszhao/semseg configs (config/<dataset>/<dataset>_pspnet50.yaml), plus the synthetic one.
# Evaluation as the official test.py: resize to scale * base_size, sliding window at the crop size
# with flip averaging.
PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": dict(
        dataset="synthetic",
        arch="tiny",
        tiny_width=16,
        pretrained=False,
        crop_size=(65, 65),
        scale_min=0.75,
        scale_max=1.5,
        rotate_min=-10.0,
        rotate_max=10.0,
        blur=False,
        epochs=6,
        batch_size=8,
        base_lr=0.02,
        workers=1,  # on 2 cores: one compute thread + one data worker
        threads=1,
        eval_every=2,
        val_batch_size=8,
        base_size=0,
    ),
    "ade20k": dict(
        **_dataset_facts("ade20k"),
        dataset="ade20k",
        data_root="dataset/ade20k",
        epochs=100,
        batch_size=16,
        workers=16,
        eval_mode="slide",
        eval_flip=True,
    ),
    "cityscapes": dict(
        **_dataset_facts("cityscapes"),
        dataset="cityscapes",
        data_root="dataset/cityscapes",
        epochs=200,
        batch_size=16,
        workers=16,
        eval_mode="slide",
        eval_flip=True,
    ),
    "voc": dict(
        **_dataset_facts("voc"),
        dataset="voc",
        data_root="dataset/voc2012",
        epochs=50,
        batch_size=16,
        workers=16,
        eval_mode="slide",
        eval_flip=True,
    ),
}


def preset_config(name: str) -> Config:
    """The Config of a preset (``synthetic``, ``ade20k``, ``cityscapes``, ``voc``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config.from_dict(dict(PRESETS[name], preset=name))


def load_config(path: str | Path | None = None, preset: str | None = None, **overrides) -> Config:
    """Defaults -> preset -> YAML file ``path`` -> ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        with open(p) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    name = preset or data.get("preset") or "synthetic"
    cfg = preset_config(name)
    data = {k.replace("-", "_"): v for k, v in data.items()}
    data["preset"] = name
    cfg = Config.from_dict(data, base=cfg)
    return cfg.replace(**overrides) if overrides else cfg


# ----------------------------------------------------------------------------- command line

_NO_CLI = {"preset", "dataset_kwargs"}

# --help text of the options that need more than their name
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


def _base_type(tp):
    """(scalar type, is_sequence, optional) of a dataclass field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        t, seq, _ = _base_type(args[0])
        return t, seq, True
    if origin is tuple:
        return typing.get_args(tp)[0], True, False
    return tp, False, False


def _none_or(t):
    def conv(s: str):
        return None if s.lower() in ("none", "null", "") else t(s)

    conv.__name__ = t.__name__
    return conv


def add_config_arguments(
    parser: argparse.ArgumentParser,
    fields: set[str] | None = None,
    exclude: set[str] = frozenset(),
) -> None:
    """Add ``--preset``, ``--config`` and one ``--key`` option per Config field (default: unset).

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
    hints = typing.get_type_hints(Config)
    group = parser.add_argument_group("config overrides (default: from preset / YAML)")
    for f in dataclasses.fields(Config):
        if f.name in _NO_CLI or f.name in exclude or (fields is not None and f.name not in fields):
            continue
        t, seq, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        names = [flag] if "_" not in f.name else [flag, "--" + f.name]
        if t is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=HELP.get(f.name),
            )
            continue
        conv = _none_or(t) if optional else t
        kw = dict(dest=f.name, default=None, type=conv, metavar=f.name.upper())
        if f.name in HELP:
            kw["help"] = HELP[f.name]
        if seq:
            kw["nargs"] = "+"
        group.add_argument(*names, **kw)


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Build the Config from parsed arguments (see :func:`add_config_arguments`).

    ``base`` (e.g. the config saved in a checkpoint) replaces defaults + preset + YAML when
    neither ``--preset`` nor ``--config`` was given; command-line overrides apply on top.
    """
    names = {f.name for f in dataclasses.fields(Config)} - _NO_CLI
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    preset, path = getattr(args, "preset", None), getattr(args, "config", None)
    if base is not None and preset is None and path is None:
        cfg = base.replace(**overrides)
    else:
        cfg = load_config(path, preset, **overrides)
    opts = getattr(args, "dataset_opt", None)
    if opts:
        import yaml

        kw = dict(cfg.dataset_kwargs)
        for item in opts:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--dataset-opt expects KEY=VALUE, got {item!r}")
            kw[key.strip()] = yaml.safe_load(value)
        cfg = cfg.replace(dataset_kwargs=kw)
    return cfg
