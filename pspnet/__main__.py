"""Command line: ``python -m pspnet {train,eval,predict,export} ...`` (also the ``pspnet`` script).

Examples::

    python -m pspnet train                                  # synthetic preset, CPU, minutes
    python -m pspnet train --preset ade20k --data-root dataset/ade20k --amp bf16 --compile
    torchrun --nproc_per_node 8 -m pspnet train --preset cityscapes --data-root dataset/cityscapes
    python -m pspnet train --resume auto                    # continue runs/<preset>/last.pth
    python -m pspnet eval --checkpoint runs/synthetic/last.pth --scales 0.75 1.0 1.25 --eval-flip
    python -m pspnet predict img1.jpg img2.png --checkpoint runs/synthetic/last.pth --out preds/
    python -m pspnet export --checkpoint runs/synthetic/last.pth --out pspnet.onnx
    python -m pspnet predict img1.jpg --onnx pspnet.onnx    # onnxruntime: the deploy extra

Every config field is an option (``--base-lr 0.02``, ``--crop-size 65 65``, ``--no-blur``...);
see ``python -m pspnet train --help``.

Errors: a problem with the input (a config value, a file, a full disk, a missing optional package)
is printed in one line, ``pspnet COMMAND: error: ...``, with exit status 2; anything else is a bug
and shows its traceback (exit status 1). ``--debug`` shows the traceback of input errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from .cli_options import add_config_arguments, config_from_args

__all__ = ["main", "build_parser"]

DEBUG_HELP = "show the traceback of input errors too (other errors always show it)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pspnet",
        description="Train, evaluate and run PSPNet.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # also accepted after the command; SUPPRESS keeps a --debug given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", metavar="{train,eval,predict,export}")
    sub.required = True

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    t = add("train", help="train (default preset: synthetic)")
    add_config_arguments(t)

    e = add("eval", help="evaluate a checkpoint (mIoU, per-class table)")
    _add_model_source(e, "checkpoint file (ours or official)")
    e.add_argument(
        "--flip",
        dest="eval_flip",
        action="store_true",
        default=None,
        help="average with the horizontally flipped image (same as --eval-flip)",
    )
    e.add_argument(
        "--mode",
        dest="eval_mode",
        choices=["whole", "slide"],
        default=None,
        help="whole-image or sliding-window inference (same as --eval-mode)",
    )
    add_config_arguments(e, exclude={"flip", "overwrite"})

    pr = add("predict", help="write colour masks and overlays for images")
    pr.add_argument("images", nargs="+", help="image files")
    _add_model_source(pr, "checkpoint file")
    pr.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    pr.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    pr.add_argument("--flip", dest="eval_flip", action="store_true", default=None)
    pr.add_argument("--mode", dest="eval_mode", choices=["whole", "slide"], default=None)
    add_config_arguments(
        pr,
        fields={
            "scales",
            "eval_flip",
            "eval_mode",
            "crop_size",
            "base_size",
            "stride_rate",
            "device",
            "arch",
            "layers",
            "classes",
            "tiny_width",
            "bins",
            "zoom_factor",
            "use_ppm",
            "amp",
            "dataset",
            "max_image_pixels",
        },
    )

    x = add("export", help="export a checkpoint to ONNX (exact at every input size)")
    x.add_argument("--checkpoint", required=True, help="checkpoint file (ours or official)")
    x.add_argument("--out", required=True, help="the .onnx file to write")
    x.add_argument(
        "--static",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=None,
        help="a fixed 1x3xHxW graph (default: batch, height and width dynamic)",
    )
    x.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    add_config_arguments(x, fields={"arch", "layers", "classes", "tiny_width", "bins", "crop_size"})
    return p


def _add_model_source(parser, checkpoint_help: str) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help=checkpoint_help)
    src.add_argument(
        "--onnx", help="an exported model (python -m pspnet export), run by onnxruntime"
    )


def _base_config(args):
    """The config saved with the model: in the checkpoint, or in the ONNX file's metadata."""
    if getattr(args, "onnx", None):
        from .onnx_runtime import onnx_config

        return onnx_config(args.onnx)
    from .build import saved_config

    return saved_config(args.checkpoint)


def _cmd_train(args) -> int:
    from .train import train

    cfg = config_from_args(args)
    t0 = time.perf_counter()
    out = train(cfg)
    m = out["metrics"]
    if m is not None and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done in {time.perf_counter() - t0:.1f}s: mIoU {m['mIoU']:.4f}; "
            f"checkpoint {out['out_dir'] / 'last.pth'}"
        )
    return 0


def _cmd_eval(args) -> int:
    from .evaluate import run_eval

    cfg = config_from_args(args, base=_base_config(args))
    run_eval(cfg, args.checkpoint, onnx=args.onnx)
    return 0


def _cmd_predict(args) -> int:
    from .predict import run_predict

    cfg = config_from_args(args, base=_base_config(args))
    written = run_predict(
        cfg, args.checkpoint, args.images, args.out, alpha=args.alpha, onnx=args.onnx
    )
    for path in written:
        print(path)
    return 0


def _cmd_export(args) -> int:
    from .build import saved_config
    from .export import export_checkpoint

    cfg = config_from_args(args, base=saved_config(args.checkpoint))
    path = export_checkpoint(args.checkpoint, args.out, cfg, static=args.static, opset=args.opset)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pspnet`` and the ``pspnet`` script; returns the exit status
    (0; 2 on an input error, printed in one line; 128 + signal number after a clean stop on
    SIGINT / SIGTERM). Any other exception propagates with its traceback: it is a bug."""
    from .errors import MissingDependency, UserError
    from .guard import NonFiniteError, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict}
    cmd = {**commands, "export": _cmd_export}[args.command]
    try:
        return cmd(args)
    except TrainingInterrupted as e:  # SIGINT / SIGTERM: the resumable checkpoint is written
        if int(os.environ.get("RANK", "0")) == 0:  # said once, by the process that wrote it
            print(f"pspnet {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    # UserError: bad input, named; MissingDependency: an optional package; OSError: a missing
    # file or a failed write (disk full...), named; NonFiniteError: a NaN / inf loss or gradient,
    # named with the epoch and step
    except (UserError, MissingDependency, OSError, NonFiniteError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"pspnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
