"""Registration of the host's architecture adapters (the Llama family, :mod:`amoeba_plugin.anatomy.llama`)."""
from __future__ import annotations

from ..hookspecs import hookimpl

#: adapter name -> the ``config.model_type`` values it handles
FAMILIES = {"llama": ("llama",), "mistral": ("mistral",), "qwen2": ("qwen2",), "qwen3": ("qwen3",),
            "amoeba": ("amoeba",)}


@hookimpl
def amoeba_register_architectures(register):
    from ..anatomy.llama import LlamaFamilyAdapter

    for name, model_types in FAMILIES.items():
        register(LlamaFamilyAdapter(name, model_types))
