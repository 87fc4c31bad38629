"""Segment image files: palette masks and side-by-side overlays (``python -m pspnet predict``).

For each input ``name.ext`` two PNG files are written to the output folder:

- ``name_mask.png``: the class ids as a palette image (mode ``P``; the palette of
  :func:`pspnet.data.palette`), so the file holds the ids and shows colours;
- ``name_overlay.png``: ``image | image blended with the coloured mask`` side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .errors import UserError

__all__ = ["segment", "colorize", "overlay", "output_stems", "run_predict"]


@torch.no_grad()
def segment(model, image: torch.Tensor, cfg: Config, device=None) -> torch.Tensor:
    """Class ids ``(H, W)`` (int64, CPU) of one image ``(3, H, W)`` RGB 0..255, using
    ``cfg``'s scales / flip / mode / crop_size / base_size / stride_rate."""
    from .data import MEAN, STD
    from .evaluate import predict_with_config

    device = torch.device(device) if device is not None else next(model.parameters()).device
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    x = ((image.float() - mean) / std)[None].to(device)
    return predict_with_config(model, x, cfg).argmax(1)[0].cpu()


def _palette_bytes(num_classes: int) -> bytes:
    from .data import palette

    pal = palette(max(num_classes, 1)).numpy().astype(np.uint8).reshape(-1)
    return bytes(pal) + bytes(768 - len(pal))


def colorize(mask: torch.Tensor, num_classes: int):
    """A PIL palette image (mode ``P``) of the class ids ``mask`` ``(H, W)``."""
    from PIL import Image

    if num_classes > 256:
        raise UserError("palette PNGs hold at most 256 classes")
    if mask.dim() != 2:
        raise ValueError(f"mask must be (H, W), got {tuple(mask.shape)}")
    arr = np.ascontiguousarray(mask.to(torch.uint8).numpy())
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    im.putpalette(_palette_bytes(num_classes))
    return im


def overlay(image: torch.Tensor, mask_im, alpha: float = 0.5):
    """``image | blend(image, coloured mask, alpha)`` side by side, as a PIL RGB image."""
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
    rgb = Image.fromarray(image.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    blended = Image.blend(rgb, mask_im.convert("RGB"), alpha)
    out = Image.new("RGB", (rgb.width * 2, rgb.height))
    out.paste(rgb, (0, 0))
    out.paste(blended, (rgb.width, 0))
    return out


def output_stems(paths: Sequence[Path]) -> list[str]:
    """One distinct name stem per input: its own stem, or for a later input whose stem was taken,
    ``stem_1``, ``stem_2``... skipping every stem of another input (compared case-insensitively,
    as some file systems do), so no output of the call overwrites another."""
    inputs = {p.stem.casefold() for p in paths}
    used: set[str] = set()
    stems = []
    for p in paths:
        stem, k = p.stem, 0
        while stem.casefold() in used or (k and stem.casefold() in inputs):
            k += 1
            stem = f"{p.stem}_{k}"
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def _output_names(stem: str) -> tuple[str, str]:
    """The mask's and the overlay's file names of an input of output stem ``stem``."""
    return f"{stem}_mask.png", f"{stem}_overlay.png"


def _refuse_inputs_as_outputs(images: Sequence[str], out: Path, stems: Sequence[str]) -> None:
    """Raise UserError, before any work, if an output path of the call is one of its inputs
    (compared resolved, and as the same file where both exist, as on a case-insensitive file
    system): writing it would replace the user's image."""

    def file_id(path: Path):
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    by_path = {Path(p).resolve(): Path(p) for p in images}
    by_id = {file_id(r): given for r, given in by_path.items()}
    by_id.pop(None, None)
    for stem in stems:
        for name in _output_names(stem):
            target = out / name
            given = by_path.get(target.resolve()) or by_id.get(file_id(target))
            if given is not None:
                raise UserError(
                    f"output {target} would overwrite the input image {given}: "
                    "choose another --out folder"
                )


def run_predict(
    cfg: Config,
    checkpoint,
    images: Sequence[str],
    out_dir="predictions",
    alpha: float = 0.5,
    onnx=None,
) -> list[Path]:
    """Segment ``images`` with ``checkpoint`` (or the exported model ``onnx``, through
    onnxruntime) and write ``<stem>_mask.png`` and ``<stem>_overlay.png`` to ``out_dir``;
    returns the written paths.

    What can fail is checked before anything is written: ``alpha``, the output folder, every
    image (FileNotFoundError / ValueError naming it) and the model. Output names are unique over
    the call (:func:`output_stems`).
    """
    from .atomic import check_writable, remove_stale_temps, write_atomic
    from .build import model_from_checkpoint
    from .data.files import read_image, set_max_image_pixels
    from .runtime import resolve_device

    if not images:
        raise UserError("no images given")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha (--alpha) must be in [0, 1], got {alpha}")
    out = check_writable(out_dir, "predictions to", folder=True)
    stems = output_stems([Path(p) for p in images])
    _refuse_inputs_as_outputs(images, out, stems)
    device = torch.device("cpu") if onnx is not None else resolve_device(cfg.device)
    set_max_image_pixels(cfg.max_image_pixels)
    loaded = [(Path(p), read_image(p)) for p in images]  # fail early on a bad file
    if onnx is not None:
        from .onnx_runtime import model_from_onnx

        model, cfg, _ = model_from_onnx(onnx, cfg, threads=cfg.threads)
    else:
        model, cfg, _ = model_from_checkpoint(checkpoint, cfg)
        model.to(device)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, [name for s in stems for name in _output_names(s)])
    written: list[Path] = []
    for (_, img), stem in zip(loaded, stems, strict=True):
        mask = segment(model, img, cfg, device)
        mask_im = colorize(mask, int(cfg.classes))
        m_path, o_path = (out / name for name in _output_names(stem))
        # atomic: an interrupted run leaves whole PNGs (old or new), never a truncated one
        write_atomic(m_path, lambda tmp, im=mask_im: im.save(tmp, format="PNG"))
        ov = overlay(img, mask_im, alpha)
        write_atomic(o_path, lambda tmp, im=ov: im.save(tmp, format="PNG"))
        written += [m_path, o_path]
    return written
