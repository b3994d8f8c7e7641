"""The exporter contract and the atomic writer every exporter goes through.

An exporter writes into a fresh temporary directory next to the destination; only when it has
finished is that directory renamed into place, so a crash or a bad input never leaves a
half-written output behind, and a killed one leaves debris the next write of the same
destination finishes or removes (:mod:`.atomic`). Register exporters through ``amoeba_register_exporters``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AmoebaError
from .atomic import (
    atomic_directory,
    atomic_update,
    check_destination,
    recover_destination,
    recover_updates,
    scratch_directory,
    write_text_atomic,
)


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


__all__ = ["ExportRequest", "Exporter", "atomic_directory", "atomic_update", "check_destination", "export",
           "recover_destination", "recover_updates", "scratch_directory", "write_text_atomic"]
