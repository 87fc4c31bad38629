"""Reading the files of a segmentation dataset: images (as 8-bit RGB), single-channel labels and
list files, each with one clear error per bad file, naming it."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

__all__ = [
    "read_image",
    "read_label",
    "read_list_file",
    "check_listed",
    "set_max_image_pixels",
]


_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")


def set_max_image_pixels(pixels: int = 0) -> None:
    """The largest image :func:`read_image` reads, in pixels, for this process (``0``: Pillow's
    default, about 179 million, its guard against decompression bombs). Pillow's limit is a
    global of the ``PIL.Image`` module; this sets it (DataLoader workers set it again)."""
    global _LIMIT
    if pixels < 0:
        raise ValueError(f"pixels must be >= 0, got {pixels}")
    _LIMIT = int(pixels)
    # Pillow refuses images over twice MAX_IMAGE_PIXELS (and warns over it)
    Image.MAX_IMAGE_PIXELS = (_LIMIT + 1) // 2 if _LIMIT else _PILLOW_DEFAULT


_PILLOW_DEFAULT = Image.MAX_IMAGE_PIXELS
_LIMIT = 0  # 0: Pillow's own limit
# the modes of integer images of more than 8 bits per pixel (single channel)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open(path, what: str):
    """``Image.open`` with one error per bad file: missing, a folder, too large, unreadable."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            if _LIMIT:  # the user raised the limit: no warning below it
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as e:
        raise UserError(
            f"cannot read {what} {path}: {e} Pillow refuses it as a possible decompression bomb; "
            "if the image is real, allow it with --max-image-pixels N (N at least its pixel count)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from e


def _to_8_bits(im: Image.Image, path) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array of ``im``. Single-channel 16-bit images (and 32-bit
    integer ones whose values fit 16 bits) are scaled as image tools do, ``round(v * 255 /
    65535)``, never clipped; other modes are Pillow's RGB conversion."""
    if im.mode in _WIDE_MODES:
        arr = np.asarray(im)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise UserError(
                f"cannot read image {path}: a 32-bit integer image (values {int(arr.min())} to "
                f"{int(arr.max())}) has no known 8-bit scale; convert it to an 8-bit or 16-bit "
                "image"
            )
        grey = np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        raise UserError(
            f"cannot read image {path}: a floating-point image has no known 8-bit scale; "
            "convert it to an 8-bit or 16-bit image"
        )
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path) -> torch.Tensor:
    """Read an image file as float32 ``(3, H, W)`` RGB, values 0..255 (an 8-bit image).

    Pillow converts 8-bit images (grey, palette, CMYK..., alpha dropped) to RGB, and reads
    16-bit colour PNGs as 8-bit; single-channel 16-bit images (grey PNG or TIFF) are scaled to 8
    bits as image tools do (:func:`_to_8_bits`), never clipped; floating-point images are
    refused. Images over the pixel limit (:func:`set_max_image_pixels`) are refused.

    Raises FileNotFoundError / IsADirectoryError, or :class:`~pspnet.errors.UserError` (too
    large, unreadable, corrupt), naming the file.
    """
    with _open(path, "image") as im:
        try:
            arr = _to_8_bits(im, path)
        except (OSError, SyntaxError, ValueError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().contiguous()


def read_label(path) -> torch.Tensor:
    """Read a single-channel label PNG as int64 ``(H, W)`` (raw indices of an ``L`` or ``P``
    image, not palette colours). Raises FileNotFoundError / ValueError naming the file."""
    im = _open(path, "label")
    try:
        with im:
            if im.mode not in _LABEL_MODES:
                raise UserError(
                    f"label {path} has mode {im.mode!r}; labels must be single-channel images "
                    "of class indices (PNG mode 'L' or 'P')"
                )
            arr = np.array(im.convert("L") if im.mode == "1" else im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UserError(f"cannot read label {path}: {e}") from e
    if arr.ndim != 2:
        raise UserError(f"label {path} is not single-channel (array shape {arr.shape})")
    return torch.from_numpy(arr.astype(np.int64))


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def read_list_file(list_file) -> list[tuple[int, list[str]]]:
    """The entries of a list file: ``(line number, whitespace-separated fields)`` of every line
    that is not blank or a ``#`` comment.

    UTF-8, with or without a byte-order mark (as Windows Notepad saves it), or UTF-16 with its
    mark; other bytes raise :class:`~pspnet.errors.UserError` naming the file and the line.
    """
    list_file = os.fspath(list_file)
    if os.path.isdir(list_file):
        raise IsADirectoryError(f"list file {list_file} is a directory")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {list_file}")
    with open(list_file, "rb") as f:
        raw = f.read()
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"list file {list_file}, line {line}: not {encoding.upper()} text ({e.reason} at byte "
            f"{e.start}); save it as UTF-8"
        ) from None
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((lineno, line.split()))
    return entries


def check_listed(where: str, img: str, lab: str | None) -> None:
    """FileNotFoundError naming the list line ``where`` when a listed file does not exist."""
    if not os.path.isfile(img):
        raise FileNotFoundError(f"{where}: image not found: {img}")
    if lab is not None and not os.path.isfile(lab):
        raise FileNotFoundError(f"{where}: label not found: {lab}")
