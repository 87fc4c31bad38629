"""The command line's config options: one ``--field-name`` per :class:`~pspnet.config.Config`
field (:data:`OPTIONS`, :func:`add_config_arguments`), ``--preset``, ``--config`` and
``--dataset-opt``, and the Config they make (:func:`config_from_args`).

Every option defaults to "not given", so that what is given overrides the preset / YAML file, or
the config saved in a checkpoint.
"""

from __future__ import annotations

import argparse
from typing import Any

from .config import PRESETS, Config, load_config, parse_yaml
from .errors import UserError

__all__ = ["OPTIONS", "HELP", "add_config_arguments", "config_from_args"]


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
    "max_image_pixels": "the largest image read, in pixels (default 0: Pillow's limit of about "
    "179 million, which guards against decompression bombs); raise it for real large images",
    "overwrite": "train into an output folder that holds another run (last.pth, metrics.jsonl "
    "or eval.json), deleting that run's files first; without it such a folder is refused "
    "(continue the run there with --resume auto)",
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
    ("threads", int, "CPU threads for torch (0: torch's default; at most 4096)"),
    ("compile", bool, "torch.compile the model"),
    ("compile_backend", str, "torch.compile backend (aot_eager: trace only)"),
    ("amp", str, "none | bf16 | fp16 (CUDA only)"),
    ("channels_last", bool, "channels_last memory format"),
    ("resume", str, HELP["resume"]),
    ("save_freq", int, "write last.pth every N epochs"),
    ("max_bad_steps", int, HELP["max_bad_steps"]),
    ("skip_bad_samples", bool, HELP["skip_bad_samples"]),
    ("max_image_pixels", int, HELP["max_image_pixels"]),
    ("overwrite", bool, HELP["overwrite"]),
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


#: the settings of the machine a run was on: a saved config's (a checkpoint's, an exported
#: model's) are not applied by ``eval`` / ``predict`` / ``export`` (``workers``, the DataLoader's
#: processes, is kept: it works on any machine)
RUNTIME_KEYS = ("device", "threads", "compile", "compile_backend", "amp", "channels_last")


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Build the Config from parsed arguments (see :func:`add_config_arguments`).

    ``base`` (e.g. the config saved in a checkpoint) replaces defaults + preset + YAML when
    neither ``--preset`` nor ``--config`` was given; command-line overrides apply on top. From
    ``base``, the runtime keys (:data:`RUNTIME_KEYS`) are not taken (the defaults are), nor its
    ``dataset_kwargs`` when ``--dataset`` names another dataset.
    """
    overrides = {k: v for k, v in vars(args).items() if k in _NAMES and v is not None}
    preset, path = getattr(args, "preset", None), getattr(args, "config", None)
    if base is not None and preset is None and path is None:
        defaults = Config()
        # where the saved model was trained says nothing about this machine: the runtime keys
        # come from this command line or the defaults
        inherited = {k: getattr(defaults, k) for k in RUNTIME_KEYS}
        if overrides.get("dataset", base.dataset) != base.dataset:
            inherited["dataset_kwargs"] = {}  # the saved options were the other dataset's
        cfg = base.replace(**{**inherited, **overrides})
    else:
        cfg = load_config(path, preset, **overrides)
    opts = getattr(args, "dataset_opt", None)
    if opts:
        kw = dict(cfg.dataset_kwargs)
        for item in opts:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--dataset-opt expects KEY=VALUE, got {item!r}")
            kw[key.strip()] = parse_yaml(value, f"--dataset-opt {item!r}: VALUE")
        cfg = cfg.replace(dataset_kwargs=kw)
    return cfg
