"""Registration of the host's architecture adapters (the Llama family, :mod:`amoeba_plugin.anatomy.llama`)."""
from __future__ import annotations

from ..anatomy.llama import LlamaFamilyAdapter
from ..hookspecs import hookimpl

ADAPTERS = (
    LlamaFamilyAdapter("llama", ("llama",)),
    LlamaFamilyAdapter("mistral", ("mistral",)),
    LlamaFamilyAdapter("qwen2", ("qwen2",)),
    LlamaFamilyAdapter("qwen3", ("qwen3",)),
    LlamaFamilyAdapter("amoeba", ("amoeba",)),
)


@hookimpl
def amoeba_register_architectures(register):
    for adapter in ADAPTERS:
        register(adapter)
