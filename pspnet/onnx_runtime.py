"""Running an exported PSPNet (``.onnx``) through onnxruntime, as a drop-in for the PyTorch model.

>>> model = OnnxModel("pspnet.onnx")   # needs: pip install onnxruntime
>>> logits = model(x)                   # x: (N, 3, H, W) normalised, any size (dynamic export)

:class:`OnnxModel` is an ``nn.Module`` without parameters whose forward runs the session, so the
evaluation and prediction code (``pspnet.evaluate.predict_probs``, ``pspnet.predict.segment``)
take it unchanged; :func:`model_from_onnx` is the counterpart of ``model_from_checkpoint``. The
command line stores the checkpoint's config in the file's metadata (``pspnet.config``), so
``predict --onnx`` / ``eval --onnx`` use the same settings as with ``--checkpoint``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from .config import Config
from .errors import MissingDependency, UserError
from .export import CLASS_NAMES_KEY, CONFIG_KEY, DEPLOY_PIP

__all__ = ["OnnxModel", "model_from_onnx", "onnx_config"]


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependency(
            f"running ONNX models needs onnxruntime, which is not installed: {DEPLOY_PIP}"
        ) from e
    return onnxruntime


def _dims(shape) -> list[int | None]:
    """An onnxruntime shape with the symbolic dimensions as ``None``."""
    return [d if isinstance(d, int) else None for d in shape]


class OnnxModel(nn.Module):
    """An exported PSPNet run by onnxruntime; ``model(x)`` returns logits like the PyTorch model.

    Args:
        path: the ``.onnx`` file (from :func:`pspnet.export_onnx` or ``python -m pspnet export``).
        providers: onnxruntime execution providers (default: all available, best first).
        threads: intra-op threads (0: onnxruntime's default, one per physical core).

    ``forward(x)`` takes ``(N, 3, H, W)`` (any device; it runs on the session's provider and
    returns float32 logits on ``x``'s device). A graph exported with a fixed size refuses other
    sizes with ``ValueError``; one with a fixed batch of 1 runs a larger batch image by image.
    Attributes: ``metadata`` (the file's ``metadata_props``), ``classes`` (or ``None`` when the
    output's class dimension is symbolic).
    """

    def __init__(self, path, *, providers=None, threads: int = 0):
        super().__init__()
        ort = _onnxruntime()
        path = Path(os.fspath(path))
        if path.is_dir():
            raise IsADirectoryError(f"ONNX model {path} is a directory, not an .onnx file")
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers or ort.get_available_providers()
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            reason = f"{type(e).__name__}: {e}"
            raise UserError(f"{path} is not a readable ONNX model ({reason})") from e
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{path}: expected one input and one output (an exported PSPNet)")
        self.input_name = inputs[0].name
        self.input_shape = _dims(inputs[0].shape)
        out_shape = _dims(outputs[0].shape)
        self.classes = out_shape[1] if len(out_shape) == 4 else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be (N, 3, H, W), got shape {tuple(x.shape)}")
        fixed = self.input_shape[2:]
        if any(f is not None and f != s for f, s in zip(fixed, x.shape[2:])):
            raise UserError(
                f"{self.path.name} was exported for {fixed[0]}x{fixed[1]} inputs only, got "
                f"{x.shape[2]}x{x.shape[3]}: export with dynamic shapes (no --static), or use "
                f"--mode slide with a {fixed[0]}x{fixed[1]} crop"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        batch = self.input_shape[0]
        if batch is not None and x.shape[0] != batch:
            if batch != 1:
                raise UserError(f"{self.path.name} takes batches of {batch}, got {x.shape[0]}")
            return torch.cat([self(x[i : i + 1]) for i in range(x.shape[0])])
        feed = {self.input_name: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        (logits,) = self.session.run(None, feed)
        return torch.from_numpy(logits).to(x.device)

    def extra_repr(self) -> str:
        providers = self.session.get_providers()
        return f"path={str(self.path)!r}, input={self.input_shape}, providers={providers}"


def onnx_config(path) -> Config | None:
    """The config stored in an exported model's metadata (``None`` when there is none)."""
    meta = OnnxModel(path).metadata
    return _config_from(meta)


def _config_from(meta: dict) -> Config | None:
    raw = meta.get(CONFIG_KEY)
    if raw is None:
        return None
    saved = json.loads(raw)
    return Config.from_dict({k: v for k, v in saved.items() if k in Config.__dataclass_fields__})


def model_from_onnx(path, cfg: Config | None = None, threads: int = 0):
    """``(OnnxModel, cfg, class_names)``: the ``model_from_checkpoint`` of an exported model.

    ``cfg`` defaults to the config stored in the file (or the defaults); its ``classes`` is set
    from the graph's output, like a checkpoint's structural keys.
    """
    model = OnnxModel(path, threads=threads)
    if cfg is None:
        cfg = _config_from(model.metadata) or Config()
    if model.classes is not None:
        cfg = cfg.replace(classes=model.classes)
    names = model.metadata.get(CLASS_NAMES_KEY)
    return model, cfg, json.loads(names) if names else None
