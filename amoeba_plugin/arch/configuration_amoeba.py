"""Config of the ``amoeba`` architecture: a Llama-family decoder whose layers may each differ."""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

#: keys of one entry of ``layer_specs`` and their defaults
LAYER_SPEC_DEFAULTS = {
    "num_attention_heads": 0,      # 0: the layer has no attention
    "num_key_value_heads": 0,
    "head_dim": 0,                 # kept channels per head (the widest KV group's)
    "head_channels": None,         # indices into the source head_dim (RoPE frequencies), None: all;
                                   # a list of lists: one per KV head, when the groups keep different channels
    "intermediate_size": 0,        # 0: the layer has no MLP
    "qkv_bias": False,
    "o_bias": False,
    "mlp_bias": False,             # gate and up
    "down_bias": False,
    "qk_norm": False,
    "sliding_window": None,
}


@strict
class AmoebaConfig(PreTrainedConfig):
    """Global fields follow ``LlamaConfig``; ``layer_specs[i]`` overrides the shape of layer ``i``.

    ``head_dim`` is the *source* head dimension: it fixes the RoPE frequencies and the attention
    scale, which pruning must not change. ``num_attention_heads``/``num_key_value_heads``/
    ``intermediate_size`` hold the largest per-layer values, for tools that read them globally.
    """

    model_type = "amoeba"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_hidden_layers: int = 1
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    intermediate_size: int = 11008
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_dropout: int | float | None = 0.0
    sliding_window: int | None = None
    layer_specs: list[dict] | None = None
    source_model_type: str | None = None

    def __post_init__(self, **kwargs):
        if self.layer_specs is None:
            self.layer_specs = [{"num_attention_heads": self.num_attention_heads,
                                 "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
                                 "intermediate_size": self.intermediate_size}
                                for _ in range(self.num_hidden_layers)]
        self.layer_specs = [{**LAYER_SPEC_DEFAULTS, **spec} for spec in self.layer_specs]
        self.num_hidden_layers = len(self.layer_specs)
        windows = {s["sliding_window"] for s in self.layer_specs if s["sliding_window"]}
        if len(windows) > 1:
            raise ValueError(f"layers use different sliding windows {sorted(windows)}; only one is supported")
        if windows:
            self.sliding_window = windows.pop()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Replaces Llama's ``hidden % heads`` rule, which pruned shapes legitimately break."""
        for i, spec in enumerate(self.layer_specs or []):
            nq, nkv = spec["num_attention_heads"], spec["num_key_value_heads"]
            if (nq == 0) != (nkv == 0) or (nkv and nq % nkv):
                raise ValueError(f"layer {i}: {nq} query heads cannot share {nkv} KV heads evenly")
            if nkv and spec["head_dim"] <= 0:
                raise ValueError(f"layer {i}: head_dim must be positive when the layer has attention")
            channels = spec["head_channels"]
            if channels and isinstance(channels[0], list):
                self._validate_group_channels(i, spec)
            elif channels is not None and len(channels) != spec["head_dim"]:
                raise ValueError(f"layer {i}: head_channels has {len(channels)} entries, head_dim is {spec['head_dim']}")

    def _validate_group_channels(self, i: int, spec: dict) -> None:
        """Per-KV-head channels: one sorted list of RoPE pairs per KV head, the widest sets head_dim."""
        channels, half = spec["head_channels"], self.head_dim // 2
        if len(channels) != spec["num_key_value_heads"]:
            raise ValueError(f"layer {i}: head_channels lists {len(channels)} KV heads, the layer has "
                             f"{spec['num_key_value_heads']}")
        if spec["head_dim"] != max(len(c) for c in channels):
            raise ValueError(f"layer {i}: head_dim must be the widest KV head's channel count")
        for c in channels:
            first = [j for j in c if j < half]
            if not c or c != sorted(set(c)) or c != first + [j + half for j in first]:
                raise ValueError(f"layer {i}: per-KV-head head_channels must be sorted RoPE pairs "
                                 f"(j and j + {half}), got {c}")
