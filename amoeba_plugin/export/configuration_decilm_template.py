"""Config class of a DeciLM (``nemotron-nas``) export, written beside it as ``configuration_decilm.py``.

Neither transformers nor vLLM ships a config class for ``nemotron-nas``; vLLM loads this one through
``auto_map`` when told to trust the directory's code. It is a ``LlamaConfig`` plus ``block_configs``
(one ``{"attention": ..., "ffn": ...}`` per layer), whose entries also read as attributes, the way
vLLM reads them (``block.attention.n_heads_in_group``). Written by amoeba-plugin.
"""
from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig


class BlockFields(dict):
    """A dict whose keys also read as attributes; a missing key raises AttributeError (so hasattr works)."""

    def __getattr__(self, key):
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return BlockFields(value) if isinstance(value, dict) else value


@strict
class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    block_configs: list | None = None
    qkv_bias: bool | None = None

    def __post_init__(self, **kwargs):
        self.block_configs = [BlockFields(block) for block in (self.block_configs or [])]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Padded query heads need not divide the hidden size (head_dim is stated explicitly)."""
