"""Reading a checkpoint file: ``torch.load`` with one clear error per kind of bad file (empty,
not a torch.save file, truncated, or really holding Python objects: only then the advice about
``weights_only=False``, for trusted files)."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import TYPE_CHECKING

import torch

from .errors import UserError

if TYPE_CHECKING:
    pass


# the first pickle record of a legacy (pre-zip) torch.save file: torch's magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _core_reason(e: BaseException) -> str:
    """The useful part of a torch.load error, without torch's advice about ``weights_only``."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, flags=re.S)
    if m:
        text = m.group(1)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    # torch's long explanations follow the first sentence
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].strip()
    return first or type(e).__name__


def _resolvable(qualname: str) -> bool:
    """False when ``module.name`` points into an importable module that has no such name: a
    name cut off by a truncated file. True otherwise (also when the module is not installed)."""
    import importlib

    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # noqa: BLE001 - not this split
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return True


def load_file(path: str | os.PathLike, map_location="cpu", weights_only: bool = True):
    """``torch.load`` a checkpoint file, with one clear error per kind of bad file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and what is wrong with it: empty; not a ``torch.save`` file
            (text, a plain pickle, another archive); truncated or corrupt; or (only then, with
            ``weights_only=True``) it really holds Python objects other than tensors and plain
            containers, in which case the message names the first one and says that
            ``weights_only=False`` is for trusted files only.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    size = os.path.getsize(path)
    if size == 0:
        raise UserError(f"{path!r} is not a PyTorch checkpoint: the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    # torch.save writes a zip archive (PyTorch >= 1.6) or a legacy pickle stream
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(
                f"{path!r} is not a readable PyTorch checkpoint: truncated or corrupt "
                f"({size} bytes, the zip archive is incomplete: {e}); it was probably not "
                "fully written or copied"
            ) from None
        if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            raise UserError(
                f"{path!r} is not a PyTorch checkpoint: a zip archive without the data.pkl "
                f"record torch.save writes (holds {shown or 'nothing'})"
            )
    elif head[:1] == b"\x80":
        if not head.startswith(_LEGACY_MAGIC):
            raise UserError(
                f"{path!r} is not a PyTorch checkpoint: a plain Python pickle, not a torch.save "
                "file"
            )
    else:
        raise UserError(
            f"{path!r} is not a PyTorch checkpoint (starts with {head[:4]!r}, "
            "expected a torch.save file)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if weights_only and m and _resolvable(m.group(1)):
            raise UserError(
                f"{path!r} holds Python objects besides tensors (the first: {m.group(1)}), "
                "which torch.load(weights_only=True) refuses to run. Only if you trust the file "
                "and where it came from, load it with weights_only=False: unpickling runs "
                "arbitrary code"
            ) from None
        reason = f"a cut-off name {m.group(1)!r}" if m else _core_reason(e)
        raise UserError(
            f"{path!r} is not a readable PyTorch checkpoint: truncated or corrupt "
            f"({size} bytes; {reason})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise UserError(
            f"{path!r} is not a readable PyTorch checkpoint: truncated or corrupt "
            f"({size} bytes; {type(e).__name__}: {_core_reason(e)})"
        ) from None
    except ImportError as e:
        raise UserError(
            f"{path!r} needs a Python module that is not installed to be read ({e})"
        ) from None
