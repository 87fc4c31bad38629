"""Exporting PSPNet: ONNX (:func:`export_onnx`) and ``torch.export`` (:func:`export_program`).

>>> program = pspnet.export_program(model.eval())            # torch.export.ExportedProgram
>>> pspnet.export_onnx(model.eval(), "pspnet.onnx")           # needs: pip install onnx onnxscript

With ``dynamic=True`` (the default) the batch, height and width are symbolic and the graph is exact
at every input size, not only at ``example_size``: while exporting, the model runs the plain-PyTorch
export formulation of :mod:`pspnet.export_ops`, whose pooling windows, interpolation taps and
weights are computed in the graph from the input's size (see that module for why a formulation and
not decompositions of the custom ops). Plain ``torch.export.export(model, ...)`` and
``torch.onnx.export(model, ..., dynamo=True)`` take the same formulation; these helpers add the
checks (eval mode, the ONNX packages), the dynamic dimensions and the names (``image`` ->
``logits``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.fx.experimental._config  # noqa: F401 (torch.fx.experimental._config)
import torch.nn as nn

from .atomic import check_writable, remove_stale_temps, write_atomic
from .errors import MissingDependency, UserError

__all__ = [
    "export_onnx",
    "export_program",
    "export_checkpoint",
    "DEPLOY_PIP",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "CONFIG_KEY",
    "CLASS_NAMES_KEY",
]

#: How to install the optional ONNX dependencies (named in the errors).
DEPLOY_PIP = 'pip install "psp-kernels[deploy]"  (or: pip install onnx onnxscript onnxruntime)'
INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: Metadata keys (``metadata_props``) written by ``python -m pspnet export``.
CONFIG_KEY, CLASS_NAMES_KEY = "pspnet.config", "pspnet.class_names"
_EXAMPLE_BATCH = 2  # an example batch of 1 would specialise the batch dimension to 1

# ONNX files above this size must keep their weights in a separate ``.data`` file (protobuf limit).
_SINGLE_FILE_LIMIT = 1_800_000_000


def _check_model(model) -> tuple[torch.device, torch.dtype]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a pspnet.PSPNet), got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "model is in training mode; export exports inference graphs: call model.eval() first "
            "(BatchNorm then uses its running statistics and dropout is off)"
        )
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def _check_size(example_size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in example_size)
    except (TypeError, ValueError) as e:
        raise UserError(f"example_size must be (height, width), got {example_size!r}") from e
    if h < 1 or w < 1:
        raise UserError(f"example_size (--static) must be positive, got {h} x {w}")
    return h, w


def _example_and_shapes(model, example_size, dynamic: bool):
    device, dtype = _check_model(model)
    h, w = _check_size(example_size)
    x = torch.zeros(_EXAMPLE_BATCH if dynamic else 1, 3, h, w, device=device, dtype=dtype)
    if not dynamic:
        return x, None
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=1),
        3: torch.export.Dim("width", min=1),
    }
    return x, {"x": dims}


def _size_oblivious():
    """Reason about symbolic sizes without assuming they are >= 2 (as ``torch.onnx.export``
    does): plain ``torch.export`` would otherwise guard every feature map to be at least 2 x 2,
    i.e. inputs of at least 9 x 9 (17 x 17 for the concat-free head)."""
    config = getattr(torch.fx.experimental, "_config", None)
    if config is None or not hasattr(config, "backed_size_oblivious"):  # pragma: no cover
        return contextlib.nullcontext()
    return config.patch(backed_size_oblivious=True)


def export_program(model: nn.Module, *, example_size=(473, 473), dynamic: bool = True):
    """``torch.export.export`` of ``model`` (eval mode) on an ``example_size`` image batch.

    Returns the ``torch.export.ExportedProgram``; with ``dynamic`` its batch, height and width are
    symbolic and ``program.module()(x)`` runs any ``(N, 3, H, W)``, ``1 x 1`` included, exactly;
    otherwise it holds one ``1 x 3 x H x W`` shape.
    """
    x, shapes = _example_and_shapes(model, example_size, dynamic)
    with torch.no_grad(), _size_oblivious():
        return torch.export.export(model, (x,), dynamic_shapes=shapes)


def _max_opset() -> int:
    """The newest ONNX opset the installed ``onnx`` package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def _check_opset(opset) -> None:
    """Refuse, before tracing, an ``opset`` that is not an int in ``1..`` :func:`_max_opset` (an
    opset the exporter cannot convert the model to is refused after tracing, before writing)."""
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 1:
        raise UserError(f"opset (--opset) must be a positive int or None, got {opset!r}")
    if opset > _max_opset():
        raise UserError(
            f"opset (--opset) {opset} is newer than the installed onnx package knows "
            f"(at most {_max_opset()})"
        )


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependency(
            f"ONNX export needs the package(s) {', '.join(missing)}, which are not installed: "
            f"{DEPLOY_PIP}"
        )


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's notices about optional packages it does not need (torchvision), a
    deprecation inside torch's own pytree code, and the version converter's tracebacks (an opset
    it cannot convert to is refused by :func:`export_onnx` in one line)."""
    loggers = [
        logging.getLogger(name)
        for name in (
            "torch.onnx._internal.exporter._registration",
            "torch.onnx._internal.exporter._compat",
            "onnxscript.version_converter",
        )
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    path,
    *,
    example_size=(473, 473),
    dynamic: bool = True,
    opset: int | None = None,
    metadata: dict | None = None,
) -> Path:
    """Export ``model`` (a :class:`pspnet.PSPNet` or the tiny model, in eval mode) to ONNX.

    Args:
        model: the model in eval mode (training mode raises ``ValueError``).
        path: the ``.onnx`` file to write (parent folders are created).
        example_size: ``(height, width)`` of the example input that is traced.
        dynamic: batch, height and width symbolic (``batch``, ``height``, ``width``); the graph
            is then exact at every input size. ``False``: one ``1 x 3 x H x W`` shape.
        opset: ONNX opset version (``None``: the exporter's default).
        metadata: extra ``str -> str`` (or JSON-serialisable) entries for the model's
            ``metadata_props`` (the command line stores the checkpoint's config there).

    Input ``image`` ``(N, 3, H, W)`` (normalised as for the model), output ``logits``. Needs the
    ``deploy`` extra (``onnx``, ``onnxscript``); a missing package raises ``ImportError`` with
    the pip command. Returns ``path`` as a ``pathlib.Path``.
    """
    x, shapes = _example_and_shapes(model, example_size, dynamic)
    _require_onnx()
    _check_opset(opset)
    path = check_writable(os.fspath(path), "the ONNX model")  # before tracing
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=nbytes > _SINGLE_FILE_LIMIT,
            verbose=False,
        )
    written = program.model.opset_imports.get("", None)
    if opset is not None and written != opset:  # the exporter could not convert to it
        raise UserError(
            f"opset (--opset) {opset}: the exporter cannot convert this model to it (it made "
            f"opset {written}); nothing was written. Leave --opset out for opset {written}"
        )
    if metadata:
        props = program.model.metadata_props
        for key, value in metadata.items():
            props[str(key)] = value if isinstance(value, str) else json.dumps(value)
    remove_stale_temps(path.parent, [path.name])
    if nbytes > _SINGLE_FILE_LIMIT:
        _save_with_external_data(program, path)
    else:  # a failed write (a full disk) leaves an existing file as it was
        write_atomic(path, lambda tmp: program.save(tmp, external_data=False))
    return path


def _save_with_external_data(program, path: Path) -> None:
    """Save a model whose weights go to a separate ``.data`` file: both are written in a
    temporary folder beside ``path`` (the model refers to its data file by name), then each is
    moved into place atomically, the data file first."""
    import shutil
    import tempfile

    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            program.save(tmp_dir / path.name, external_data=True)
        except (OSError, RuntimeError) as e:
            raise OSError(f"could not write {path} ({type(e).__name__}: {e})") from e
        files = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)  # the model last
        for f in files:
            write_atomic(path.parent / f.name, lambda t, src=f: shutil.copyfile(src, t))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def export_checkpoint(checkpoint, path, cfg=None, *, static=None, opset: int | None = None):
    """``python -m pspnet export``: the checkpoint's model (its own config, like ``eval``) to ONNX.

    The config and class names go into the file's metadata, so ``predict --onnx`` and
    ``eval --onnx`` run with the same settings as with ``--checkpoint``. ``static``: ``(H, W)``
    for a fixed ``1 x 3 x H x W`` graph; otherwise dynamic, traced at the config's crop size.
    """
    from .build import model_from_checkpoint

    _require_onnx()  # before loading the checkpoint
    _check_opset(opset)
    if static is not None:
        _check_size(static)
    check_writable(path, "the ONNX model")
    model, cfg, class_names = model_from_checkpoint(checkpoint, cfg)
    metadata = {CONFIG_KEY: cfg.to_dict()}
    if class_names:
        metadata[CLASS_NAMES_KEY] = [str(c) for c in class_names]
    size = static if static is not None else cfg.crop_size
    return export_onnx(
        model, path, example_size=size, dynamic=static is None, opset=opset, metadata=metadata
    )
