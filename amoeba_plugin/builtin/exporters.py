"""Built-in exporters: ``auto`` (the CLI default), ``hf``, ``amoeba`` and ``plan``."""
from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_exporters(register):
    from ..export.writers import AmoebaExporter, AutoExporter, HuggingFaceExporter, PlanExporter

    for exporter in (AutoExporter(), HuggingFaceExporter(), AmoebaExporter(), PlanExporter()):
        register(exporter)
