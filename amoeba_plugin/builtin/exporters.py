"""Built-in exporters: ``auto`` (the CLI default), ``hf``, ``amoeba``, ``plan``, and for inference engines
``decilm`` (vLLM) and ``gguf`` (llama.cpp)."""
from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def amoeba_register_exporters(register):
    from ..export.engines import DeciLMExporter, GGUFExporter
    from ..export.writers import AmoebaExporter, AutoExporter, HuggingFaceExporter, PlanExporter

    for exporter in (AutoExporter(), HuggingFaceExporter(), AmoebaExporter(), PlanExporter(), DeciLMExporter(),
                     GGUFExporter()):
        register(exporter)
