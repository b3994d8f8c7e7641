"""Physical application: slice the weights into a smaller model that runs faster.

The sliced model is a stock model of the source family when the family's own config can express
the result exactly (same parameter names and shapes, nothing added), otherwise the project's own
``amoeba`` architecture. Dropped layers are re-indexed so the KV cache stays dense.
"""
from __future__ import annotations

import copy
import warnings

import torch

from ..anatomy import Anatomy
from ..arch import AmoebaConfig, AmoebaForCausalLM
from ..plan import Plan
from .index import kv_rows, query_rows

_ATTN = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
         "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm", "input_norm": "input_layernorm"}
_MLP = {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
        "post_attention_norm": "post_attention_layernorm"}


def slice_state_dict(model, anatomy: Anatomy, plan: Plan, patch: dict | None = None) -> dict[str, torch.Tensor]:
    """The sliced model's parameters, in Llama naming with layers renumbered 0..n-1."""
    plan.validate(anatomy)
    r = plan.resolved(anatomy)
    src = {k: v for k, v in model.state_dict().items()}
    src.update(patch or {})
    hid = torch.tensor(r.hidden_channels)
    out: dict[str, torch.Tensor] = {}

    def take(name, rows=None, cols=None):
        t = src[name]
        if rows is not None:
            t = t.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=t.device))
        if cols is not None:
            t = t.index_select(1, torch.as_tensor(cols, dtype=torch.long, device=t.device))
        return t.detach().clone().contiguous()

    def zeros(module, size):
        w = src[module + ".weight"]
        return torch.zeros(size, dtype=w.dtype, device=w.device)

    out["model.embed_tokens.weight"] = take(f"{anatomy.embed}.weight", cols=hid)
    out["model.norm.weight"] = take(f"{anatomy.final_norm}.weight", rows=hid)
    if not anatomy.tied_embeddings:
        out["lm_head.weight"] = take(f"{anatomy.lm_head}.weight", cols=hid)
    for new, lp in enumerate(r.layers):
        layer = anatomy.layer(lp.index)
        mods, pre = layer.modules, f"model.layers.{new}."
        if layer.has_attention and lp.kv_groups:
            qr, kvr = query_rows(lp, layer), kv_rows(lp, layer)
            out[pre + _ATTN["input_norm"] + ".weight"] = take(mods["input_norm"] + ".weight", rows=hid)
            for role, rows in (("q", qr), ("k", kvr), ("v", kvr)):
                out[pre + _ATTN[role] + ".weight"] = take(mods[role] + ".weight", rows=rows, cols=hid)
                if mods[role] + ".bias" in src:
                    out[pre + _ATTN[role] + ".bias"] = take(mods[role] + ".bias", rows=rows)
            out[pre + _ATTN["o"] + ".weight"] = take(mods["o"] + ".weight", rows=hid, cols=qr)
            if mods["o"] + ".bias" in src:
                out[pre + _ATTN["o"] + ".bias"] = take(mods["o"] + ".bias", rows=hid)
            elif plan.output_bias:  # the plan promises an output bias on every kept layer
                out[pre + _ATTN["o"] + ".bias"] = zeros(mods["o"], len(hid))
            for role in ("q_norm", "k_norm"):
                if role in mods:
                    out[pre + _ATTN[role] + ".weight"] = take(mods[role] + ".weight")
        if layer.has_mlp and lp.mlp_channels:
            ch = lp.mlp_channels
            out[pre + _MLP["post_attention_norm"] + ".weight"] = take(mods["post_attention_norm"] + ".weight", rows=hid)
            for role in ("gate", "up"):
                out[pre + _MLP[role] + ".weight"] = take(mods[role] + ".weight", rows=ch, cols=hid)
                if mods[role] + ".bias" in src:
                    out[pre + _MLP[role] + ".bias"] = take(mods[role] + ".bias", rows=ch)
            out[pre + _MLP["down"] + ".weight"] = take(mods["down"] + ".weight", rows=hid, cols=ch)
            if mods["down"] + ".bias" in src:
                out[pre + _MLP["down"] + ".bias"] = take(mods["down"] + ".bias", rows=hid)
            elif plan.output_bias:
                out[pre + _MLP["down"] + ".bias"] = zeros(mods["down"], len(hid))
    return out


def _source_channels(lp, layer, source_specs) -> list[list[int]]:
    """Per kept KV group of a resolved layer plan, its kept head channels as indices into the
    *source's* head_dim (composing with an earlier channel pruning), which fix the RoPE frequencies."""
    channels = lp.group_channels()
    if layer.group_head_dims is not None:  # a packed layer: each group has its own source channels
        present = source_specs[layer.index]["head_channels"]
        return [[present[g][c] for c in chs] for g, chs in zip(lp.kv_groups, channels)]
    if layer.head_channels is not None:
        return [[layer.head_channels[c] for c in chs] for chs in channels]
    return channels


def _channels_spec(channels: list[list[int]], head_dim: int):
    """``head_channels`` of a layer spec: None for whole heads, one list when every group keeps the
    same channels, else one list per KV head."""
    if all(c == channels[0] for c in channels):
        return None if channels[0] == list(range(head_dim)) else channels[0]
    return channels


def _layer_specs(model, anatomy: Anatomy, plan: Plan, state: dict) -> list[dict]:
    cfg = model.config
    r = plan.resolved(anatomy)
    source_specs = getattr(cfg, "layer_specs", None)
    specs = []
    for new, lp in enumerate(r.layers):
        layer = anatomy.layer(lp.index)
        attn = layer.has_attention and bool(lp.kv_groups)
        pre = f"model.layers.{new}."
        channels = _source_channels(lp, layer, source_specs) if attn else None
        if source_specs is not None:
            window = source_specs[lp.index].get("sliding_window")
        else:
            types = getattr(cfg, "layer_types", None)
            window = getattr(cfg, "sliding_window", None)
            if types is not None and types[lp.index] != "sliding_attention":
                window = None
            if getattr(cfg, "use_sliding_window", True) is False:
                window = None
        specs.append({
            "num_attention_heads": sum(len(q) for q in lp.query_heads) if attn else 0,
            "num_key_value_heads": len(lp.kv_groups) if attn else 0,
            "head_dim": max(len(c) for c in channels) if attn else 0,
            "head_channels": _channels_spec(channels, anatomy.rope_head_dim) if attn else None,
            "intermediate_size": len(lp.mlp_channels) if layer.has_mlp else 0,
            "qkv_bias": pre + "self_attn.q_proj.bias" in state,
            "o_bias": pre + "self_attn.o_proj.bias" in state,
            "mlp_bias": pre + "mlp.gate_proj.bias" in state,
            "down_bias": pre + "mlp.down_proj.bias" in state,
            "qk_norm": pre + "self_attn.q_norm.weight" in state,
            "sliding_window": window if attn else None,
        })
    return specs


def _amoeba_config(model, anatomy: Anatomy, specs: list[dict], hidden: int) -> AmoebaConfig:
    cfg = model.config
    return AmoebaConfig(
        vocab_size=anatomy.vocab_size, hidden_size=hidden, head_dim=anatomy.rope_head_dim,
        num_attention_heads=max([s["num_attention_heads"] for s in specs] + [1]),
        num_key_value_heads=max([s["num_key_value_heads"] for s in specs] + [1]),
        intermediate_size=max([s["intermediate_size"] for s in specs] + [1]),
        hidden_act=getattr(cfg, "hidden_act", "silu"), rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings, rope_parameters=copy.deepcopy(cfg.rope_parameters),
        tie_word_embeddings=anatomy.tied_embeddings, pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, layer_specs=specs,
        source_model_type=getattr(cfg, "source_model_type", None) or cfg.model_type,
        dtype=getattr(cfg, "dtype", None))


def _stock_config(model, specs: list[dict], hidden: int, kept: list[int]):
    """The family's own config for the sliced shape, or None if it cannot express it."""
    cfg = model.config
    if cfg.model_type == "amoeba" or not specs:
        return None
    keys = ("num_attention_heads", "num_key_value_heads", "head_dim", "head_channels", "intermediate_size",
            "qkv_bias", "o_bias", "mlp_bias", "down_bias", "qk_norm")
    shapes = {tuple(str(s[k]) for k in keys) for s in specs}
    s = specs[0]
    if len(shapes) != 1 or s["head_channels"] is not None or not s["num_key_value_heads"] or not s["intermediate_size"]:
        return None
    data = cfg.to_dict()
    data.update(num_hidden_layers=len(specs), num_attention_heads=s["num_attention_heads"],
                num_key_value_heads=s["num_key_value_heads"], head_dim=s["head_dim"],
                intermediate_size=s["intermediate_size"], hidden_size=hidden)
    if "layer_types" in data and data["layer_types"] is not None:
        data["layer_types"] = [data["layer_types"][i] for i in kept]
    if "max_window_layers" in data and data.get("max_window_layers") is not None:
        data["max_window_layers"] = min(data["max_window_layers"], len(specs))
    if "attention_bias" in data:  # Llama/Mistral/Qwen3 put one switch on q, k, v and o together
        if len({s["qkv_bias"], s["o_bias"]}) > 1:
            return None
        data["attention_bias"] = s["qkv_bias"]
    if "mlp_bias" in data:
        if s["mlp_bias"] != s["down_bias"]:
            return None
        data["mlp_bias"] = s["mlp_bias"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return type(cfg).from_dict(data)
    except Exception:  # the family's validators reject this shape (e.g. hidden % heads != 0)
        return None


def build_config(model, anatomy: Anatomy, plan: Plan, state: dict, prefer: str = "auto"):
    """Config of the sliced model: ``prefer`` is ``auto`` (stock if expressible), ``stock`` or ``amoeba``."""
    r = plan.resolved(anatomy)
    specs = _layer_specs(model, anatomy, plan, state)
    hidden = len(r.hidden_channels)
    stock = None if prefer == "amoeba" else _stock_config(model, specs, hidden, [lp.index for lp in r.layers])
    if stock is not None:
        with torch.device("meta"):
            probe = type(model)._from_config(stock) if hasattr(type(model), "_from_config") else type(model)(stock)
        expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
        if anatomy.tied_embeddings:
            expected.pop("lm_head.weight", None)
        if expected != {k: tuple(v.shape) for k, v in state.items()}:
            stock = None
    if stock is None and prefer == "stock":
        from ..errors import PlanError
        raise PlanError(f"the {model.config.model_type} config cannot express this plan (it is not uniform "
                        "across layers, prunes channels inside heads, or adds biases the family lacks)",
                        "export with the 'amoeba' exporter, which loads after `import amoeba_plugin`")
    return stock if stock is not None else _amoeba_config(model, anatomy, specs, hidden)


def _skipped_init():
    """transformers' context that skips weight initialisation (what ``from_pretrained`` uses); a no-op
    where this transformers lacks it."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


def slice_model(model, anatomy: Anatomy, plan: Plan, patch: dict | None = None, prefer: str = "auto"):
    """A new, smaller model computing what ``apply_soft(model, anatomy, plan, patch)`` computes."""
    from transformers import AutoModelForCausalLM

    state = slice_state_dict(model, anatomy, plan, patch)
    config = build_config(model, anatomy, plan, state, prefer)
    dtype = next(model.parameters()).dtype
    with _skipped_init():  # every parameter is overwritten below (checked): random init would be wasted
        small = (AmoebaForCausalLM(config) if isinstance(config, AmoebaConfig)
                 else AutoModelForCausalLM.from_config(config))
    missing, unexpected = small.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (anatomy.tied_embeddings and k == "lm_head.weight")]
    if missing or unexpected:  # a bug, not a user error: the config and the sliced weights disagree
        raise RuntimeError(f"sliced weights do not fit the built config: missing {missing}, unexpected {unexpected}")
    if anatomy.tied_embeddings:
        small.tie_weights()
    small.to(next(model.parameters()).device)
    small.to(dtype).eval()
    small.config.dtype = dtype
    if hasattr(model, "generation_config") and model.generation_config is not None:
        small.generation_config = copy.deepcopy(model.generation_config)
    return small
