"""The exporter contract and the atomic writer every exporter goes through.

An exporter writes into a fresh temporary directory next to the destination; only when it has
finished is that directory renamed into place, so a crash or a bad input never leaves a
half-written output behind. Register exporters through ``amoeba_register_exporters``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AmoebaError


@dataclass
class ExportRequest:
    """What an exporter gets: the source model and the plan (it slices itself), plus metadata."""

    model: Any
    anatomy: Any
    plan: Any
    tokenizer: Any = None
    patch: dict | None = None
    #: free-form facts for the model card: method, budget, calibration source, metrics before/after
    info: dict = field(default_factory=dict)
    #: an already sliced model, when the caller has one (saves slicing twice)
    sliced: Any = None
    #: the dtype weights are written in ("float32", "float16", "bfloat16"); None: the source's stored dtype
    dtype: str | None = None


class Exporter:
    """Base class: set ``name``/``description``; implement :meth:`check` and :meth:`write`."""

    name: str = ""
    description: str = ""

    def check(self, request: ExportRequest) -> str | None:
        """Why this exporter cannot write ``request`` (one line), or None if it can."""
        return None

    def write(self, request: ExportRequest, directory: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def check_destination(destination: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise if ``destination`` cannot receive an export; never creates anything."""
    dest = Path(destination).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise AmoebaError(f"{dest} exists and is a file", "choose a directory path for the output")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise AmoebaError(f"output directory {dest} already exists and is not empty",
                          "choose a new directory or pass --overwrite")
    return dest


@contextmanager
def atomic_directory(destination: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory; on success it replaces ``destination``, on error it vanishes."""
    dest = check_destination(destination, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(exporter_name: str, request: ExportRequest, destination: str | os.PathLike,
           overwrite: bool = False, extra: Callable[[Path], None] | None = None) -> Path:
    """Check, then write atomically with the named exporter; fire ``amoeba_on_export``.

    ``extra(tmp_dir)`` may add files (e.g. the run's config) before the directory is renamed in place.
    """
    from ..plugins import get, hook

    exporter = get("exporters", exporter_name)
    request.plan.validate(request.anatomy)
    reason = exporter.check(request)
    if reason:
        raise AmoebaError(f"the '{exporter_name}' exporter cannot write this plan: {reason}",
                          "pick another exporter (see `amoeba plugins`), e.g. --exporter amoeba")
    with atomic_directory(destination, overwrite) as tmp:
        exporter.write(request, tmp)
        if extra is not None:
            extra(tmp)
    dest = Path(destination).expanduser().resolve()
    hook().amoeba_on_export(directory=dest, plan=request.plan, exporter=exporter)
    return dest
