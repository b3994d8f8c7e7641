"""The project's own per-layer decoder architecture (``model_type: amoeba``).

Registered with transformers' Auto classes when ``amoeba_plugin`` is imported, so heterogeneous
exports load with plain ``AutoModelForCausalLM.from_pretrained(path)`` and no remote code.
"""
from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_amoeba import AmoebaConfig
from .modeling_amoeba import AmoebaForCausalLM, AmoebaModel


def register_with_transformers() -> None:
    """Idempotent: safe to call again after another import registered it."""
    try:
        AutoConfig.register(AmoebaConfig.model_type, AmoebaConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(AmoebaConfig, AmoebaForCausalLM)
    except ValueError:
        pass


register_with_transformers()  # whoever imports the architecture can load its exports

__all__ = ["AmoebaConfig", "AmoebaForCausalLM", "AmoebaModel", "register_with_transformers"]
