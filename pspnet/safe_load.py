"""Reading a ``torch.save`` file that may be damaged or hostile: :func:`safe_load` is
``torch.load`` behind checks that import and run nothing the file names, with one clear error per
kind of bad file.

Before ``torch.load`` runs, the file is checked from its bytes:

- it is a file (not a directory), not empty, and a ``torch.save`` file: a zip archive holding a
  ``data.pkl`` record, or the legacy pickle stream that starts with torch's magic number;
- every record of the zip archive matches its CRC-32 checksum (``zipfile``), so a file damaged in
  the middle is refused, naming the damaged record and the tensor it holds;
- with ``weights_only``, the Python globals its pickle names are listed statically
  (:func:`torch.serialization.get_unsafe_globals_in_checkpoint`, which disassembles the pickle
  without importing anything); a file that names anything outside torch's weights-only allowlist
  is refused with their names: it holds code or objects, and nothing of it was run;
- a legacy file's pickles are disassembled (:mod:`pickletools`) to tell a truncated file.

Only a file that passes these checks and still fails in ``torch.load`` is explained from torch's
error text (:func:`explain_load_error`), as a fallback.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import zipfile

import torch

from .errors import UserError

__all__ = ["safe_load", "damaged_tensor", "explain_load_error"]

# the first pickle record of a legacy (pre-zip) torch.save file: torch's magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
# a legacy file: magic number, protocol version, system info, the object, the storage keys
_LEGACY_PICKLES = 5

_TRUST = (
    "Only if you trust the file and where it came from, load it with weights_only=False: "
    "unpickling runs arbitrary code"
)


def _objects_error(path: str, names) -> UserError:
    shown = ", ".join(sorted(names)[:3]) + (" ..." if len(names) > 3 else "")
    return UserError(
        f"{path!r} holds code or Python objects besides tensors ({shown}), which a weights-only "
        f"load refuses: nothing in it was imported or run. {_TRUST}"
    )


def _corrupt(path: str, size: int, reason: str) -> UserError:
    return UserError(
        f"{path!r} is not a readable PyTorch checkpoint: truncated or corrupt ({size} bytes; "
        f"{reason})"
    )


def _check_path(path: str) -> int:
    """The file's size; IsADirectoryError / FileNotFoundError / UserError (empty) otherwise."""
    if os.path.isdir(path):
        inside = os.path.join(path, "last.pth")
        hint = f", e.g. {inside!r}" if os.path.isfile(inside) else ""
        raise IsADirectoryError(
            f"checkpoint {path!r} is a directory, not a file: pass the checkpoint file in it{hint}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    size = os.path.getsize(path)
    if size == 0:
        raise UserError(f"{path!r} is not a PyTorch checkpoint: the file is empty (0 bytes)")
    return size


def _data_pkl(names: list[str]) -> str | None:
    return next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)


def damaged_tensor(archive: zipfile.ZipFile, record: str) -> str | None:
    """Where the tensor stored in ``record`` (``<prefix>/data/<key>``) sits in the checkpoint, as
    a path of keys (``model/cls.0.weight``); None when no tensor uses it or ``data.pkl`` cannot be
    read.

    ``data.pkl`` is read by torch's weights-only unpickler with every storage on the ``meta``
    device: no tensor data is read, no global outside torch's allowlist is resolved."""
    from torch import _weights_only_unpickler

    pkl = _data_pkl(archive.namelist())
    if pkl is None or not record.startswith(pkl[: -len("data.pkl")] + "data/"):
        return None
    key = record.rsplit("/", 1)[1]
    storages = {}

    def persistent_load(saved_id):
        _, storage_type, skey, _, numel = saved_id
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        storage = torch.UntypedStorage(numel * torch._utils._element_size(dtype), device="meta")
        storages[storage._cdata] = skey
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    try:
        unpickler = _weights_only_unpickler.Unpickler(io.BytesIO(archive.read(pkl)))
        unpickler.persistent_load = persistent_load
        obj = unpickler.load()
    except Exception:  # noqa: BLE001 - naming the tensor is a courtesy; the record is named anyway
        return None
    for where, tensor in _tensors(obj, ()):
        if storages.get(tensor.untyped_storage()._cdata) == key:
            return "/".join(where)
    return None


def _tensors(obj, where: tuple):
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, (*where, str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, (*where, str(i)))


def _check_zip(path: str, size: int, verify: bool, weights_only: bool) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if _data_pkl(names) is None:
                shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
                raise UserError(
                    f"{path!r} is not a PyTorch checkpoint: a zip archive without the data.pkl "
                    f"record torch.save writes (holds {shown or 'nothing'})"
                )
            bad = archive.testzip() if verify else None
            if bad is not None:
                tensor = damaged_tensor(archive, bad)
                what = f"the data of tensor {tensor}" if tensor else "a record"
                raise _corrupt(
                    path, size, f"{what} ({bad}) fails its CRC-32 checksum: the file was damaged "
                    "after it was written"
                )  # fmt: skip
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise _corrupt(
            path, size, f"the zip archive is incomplete: {e}; it was probably not fully written "
            "or copied"
        ) from None  # fmt: skip
    if weights_only:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - an opcode it does not know: torch.load decides
            unsafe = []
        if unsafe:
            raise _objects_error(path, unsafe)


def _check_legacy(path: str, size: int) -> None:
    """Disassemble the pickles of a legacy file: truncated ones are found without loading."""
    with open(path, "rb") as f:
        for _ in range(_LEGACY_PICKLES):
            try:
                for _ in pickletools.genops(f):
                    pass
            except ValueError as e:  # "pickle exhausted before seeing STOP"
                raise _corrupt(path, size, f"its pickled records end early: {e}") from None


def explain_load_error(e: BaseException, path: str, size: int, weights_only: bool) -> Exception:
    """The error to raise for ``torch.load``'s exception ``e`` on a file that passed the checks
    of :func:`safe_load`, read from torch's message (the fallback): Python objects refused by a
    weights-only load, a module that is not installed, or a truncated / corrupt file."""
    text = str(e)
    # torch < 2.6: "Unsupported global: GLOBAL mod.name"; later: "unsupported GLOBAL mod.name
    # whose module mod is blocked"
    m = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+?)(?:\s|$)", text)
    if weights_only and isinstance(e, pickle.UnpicklingError) and m:
        return _objects_error(path, [m.group(1)])
    if isinstance(e, ImportError):
        return UserError(f"{path!r} needs a Python module that is not installed to be read ({e})")
    return _corrupt(path, size, f"{type(e).__name__}: {core_reason(e)}")


def core_reason(e: BaseException) -> str:
    """The first sentence of torch's error, without its advice about ``weights_only`` and its
    terminal colour codes."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, flags=re.S)
    if m:
        text = m.group(1)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].strip()
    return " ".join(first.split()) or type(e).__name__


def safe_load(
    path: str | os.PathLike, map_location="cpu", weights_only: bool = True, verify: bool = True
):
    """``torch.load(path)`` after the checks of this module; one clear error per bad file.

    ``verify``: check every zip record's CRC-32 first (reads the whole file once more; set
    ``False`` for a quick look, e.g. with ``map_location="meta"`` to read a config only).

    Raises:
        FileNotFoundError: no such file. IsADirectoryError: a directory.
        UserError (a ValueError): naming the file and what is wrong with it: empty; not a
            ``torch.save`` file (text, a plain pickle, another archive); truncated; damaged
            (the record and tensor whose checksum fails); or, with ``weights_only``, holding
            code or Python objects other than tensors and plain containers (named; nothing was
            run), in which case the message says that ``weights_only=False`` is for trusted
            files only.
    """
    path = os.fspath(path)
    size = _check_path(path)
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    # torch.save writes a zip archive (PyTorch >= 1.6) or a legacy pickle stream
    if head[:4] == b"PK\x03\x04":
        _check_zip(path, size, verify, weights_only)
    elif head[:1] == b"\x80":
        if not head.startswith(_LEGACY_MAGIC):
            raise UserError(
                f"{path!r} is not a PyTorch checkpoint: a plain Python pickle, not a torch.save "
                "file"
            )
        _check_legacy(path, size)
    else:
        raise UserError(
            f"{path!r} is not a PyTorch checkpoint (starts with {head[:4]!r}, "
            "expected a torch.save file)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (
        pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError,
        AttributeError, ImportError,
    ) as e:  # fmt: skip
        raise explain_load_error(e, path, size, weights_only) from None
