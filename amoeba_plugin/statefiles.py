"""The tool's own state files (run state, logs, checkpoints, bundles), read so that damage is one clear
error, and outputs checked for writability before any work.

A run killed mid-write, a disk that filled up, or a file edited by hand leaves JSON that does not
parse or a truncated safetensors/torch file. Read through :func:`read_json`, :func:`read_jsonl`,
:func:`read_tensors` and :func:`read_torch`, such a file raises
:class:`~amoeba_plugin.errors.CorruptFileError` naming the file, what it is, and the fix (by default:
delete it, or the run directory, and run again), never a decoder's traceback.
:func:`check_writable` says, before a model loads, whether an output path can be written at all
(a parent that is a file, a read-only directory or file system), so a long run does not fail at its end.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import AmoebaError, CorruptFileError

_MISSING = object()


def _fix(path: Path, fix: str | None) -> str:
    return fix or f"delete {path} (or the run directory it is in) and run again, or restore it from a backup"


def _damaged(path: Path, what: str, reason: str, fix: str | None) -> CorruptFileError:
    reason = " ".join(str(reason).split())[:200]
    return CorruptFileError(f"{what} {path} is damaged ({reason})", _fix(path, fix))


def _missing(path: Path, what: str, fix: str | None) -> CorruptFileError:
    return CorruptFileError(f"{what} {path} is missing", fix or f"check the path, or run again to recreate {path.name}")


def _text(path: Path, what: str, fix: str | None) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _damaged(path, what, "not UTF-8 text: a binary file?", fix) from None
    except IsADirectoryError:
        raise _damaged(path, what, "it is a directory, not a file", fix) from None
    except OSError as exc:
        raise CorruptFileError(f"cannot read {what} {path}: {exc.strerror or exc}", "check its permissions") from None


def read_json(path, what: str = "JSON file", fix: str | None = None, *, default: Any = _MISSING,
              expect: type | tuple | None = dict) -> Any:
    """The JSON value in ``path``; ``default`` when the file does not exist (else an error).

    ``what`` names the file for the message (e.g. ``"search state"``); ``expect`` is the type the top
    level must have (an object by default; None for any)."""
    path = Path(path)
    if not path.exists():
        if default is not _MISSING:
            return default
        raise _missing(path, what, fix)
    text = _text(path, what, fix)
    if not text.strip():
        raise _damaged(path, what, "the file is empty", fix)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _damaged(path, what, f"not valid JSON: {exc}", fix) from None
    if expect is not None and not isinstance(value, expect):
        raise _damaged(path, what, f"holds {_kind(value)}, expected {_kind_of(expect)}", fix)
    return value


def read_jsonl(path, what: str = "log", fix: str | None = None, *, missing_ok: bool = True,
               expect: type | tuple | None = dict, torn_tail_ok: bool = False) -> list:
    """The records of a JSON-lines file (one JSON value a line, blank lines skipped); ``[]`` when the file
    does not exist and ``missing_ok``. ``torn_tail_ok`` drops a last line cut off mid-write (no newline
    at the end), which a killed run leaves; any other damaged line is an error naming its number."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise _missing(path, what, fix)
    text = _text(path, what, fix)
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            if torn_tail_ok and number == len(lines) and not text.endswith("\n"):
                break
            raise _damaged(path, what, f"line {number} is not valid JSON: {exc}", fix) from None
        if expect is not None and not isinstance(value, expect):
            raise _damaged(path, what, f"line {number} holds {_kind(value)}, expected {_kind_of(expect)}", fix)
        records.append(value)
    return records


def read_tensors(path, what: str = "safetensors file", fix: str | None = None, device: str = "cpu") -> dict:
    """``{name: tensor}`` of a safetensors file; a missing, truncated or foreign file is one clear error."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, fix)
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, a header that is not JSON, ...
        raise _damaged(path, what, f"{type(exc).__name__}: {exc}", fix) from None


def read_torch(path, what: str = "checkpoint", fix: str | None = None) -> Any:
    """A ``torch.save`` file loaded with ``weights_only=True`` (tensors and plain containers only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, unpickling error, EOF, ...
        raise _damaged(path, what, f"{type(exc).__name__}: {exc}", fix) from None


def check_tensors_file(path, what: str = "safetensors file", fix: str | None = None) -> None:
    """Check a safetensors file without loading it: its header parses and the file is as long as the
    header says (a truncated or foreign file fails). Cheap, for a large checkpoint to be read later."""
    import struct

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, fix)
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error) as exc:
        raise _damaged(path, what, f"{type(exc).__name__}: {exc}", fix) from None
    if 8 + length + max(ends, default=0) != size:
        raise _damaged(path, what, f"{size} bytes on disk, {8 + length + max(ends, default=0)} expected: truncated?",
                       fix)


def check_torch_file(path, what: str = "checkpoint", fix: str | None = None) -> None:
    """Check a ``torch.save`` file without loading it: its zip directory (at the end of the file) reads,
    so a truncated file fails. Cheap, for a large checkpoint to be read later."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, fix)
    try:
        with zipfile.ZipFile(path) as z:
            if not any(name.endswith("data.pkl") for name in z.namelist()):
                raise zipfile.BadZipFile("no data.pkl: not a torch.save file")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _damaged(path, what, f"{type(exc).__name__}: {exc}", fix) from None


def check_writable(path, what: str = "output", directory: bool = True) -> Path:
    """Raise unless ``path`` can be created or written; creates nothing that stays.

    Finds the nearest existing ancestor: it must be a directory (not a file), and a probe file must be
    creatable in it (this also catches read-only file systems, and works for root, which ``os.access``
    does not). An existing ``path`` must be a directory when ``directory`` (a file otherwise) and be
    writable itself."""
    target = Path(path).expanduser().absolute()
    if target.exists():
        if directory and not target.is_dir():
            raise AmoebaError(f"the {what} {target} exists and is a file", f"give a directory path for the {what}")
        if not directory and target.is_dir():
            raise AmoebaError(f"the {what} {target} is a directory", f"give a file path for the {what}")
        probe_dir = target if target.is_dir() else target.parent
    else:
        probe_dir = target.parent
        while not probe_dir.exists():
            if probe_dir.parent == probe_dir:
                break
            probe_dir = probe_dir.parent
        if probe_dir.exists() and not probe_dir.is_dir():
            raise AmoebaError(f"the {what} {target} cannot be created: {probe_dir} is a file, not a directory",
                              f"choose a path for the {what} whose parent is a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".amoeba-write-check-", dir=probe_dir)
    except OSError as exc:
        raise AmoebaError(f"the {what} {target} cannot be written: {probe_dir} is not writable "
                          f"({exc.strerror or exc})", f"choose a path for the {what} in a writable directory") from None
    os.close(fd)
    os.unlink(probe)
    if target.is_file() and not os.access(target, os.W_OK):
        raise AmoebaError(f"the {what} {target} is read-only", f"make it writable, or choose another path for the {what}")
    return target


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _kind_of(expect) -> str:
    types = expect if isinstance(expect, tuple) else (expect,)
    return " or ".join({dict: "an object", list: "a list"}.get(t, t.__name__) for t in types)


__all__ = ["check_tensors_file", "check_torch_file", "check_writable", "read_json", "read_jsonl", "read_tensors", "read_torch"]
