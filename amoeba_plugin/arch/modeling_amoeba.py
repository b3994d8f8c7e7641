"""Modeling of the ``amoeba`` architecture: Llama's maths with a shape per layer.

Differences from ``LlamaForCausalLM``, each needed to express a pruned model exactly:

* every layer has its own query heads, KV heads, head_dim and MLP width; either sub-block may be
  absent (a layer with no attention keeps no KV-cache slot: cache indices count attention layers);
* heads may keep a subset of their channels; RoPE then uses the frequencies of the kept channels
  (``head_channels``) and the attention scale stays ``source_head_dim ** -0.5``;
* each KV group may keep its own channels (``head_channels`` with one list per KV head): the
  projections store only the kept rows, packed group after group, and the heads are zero-padded to
  the layer's widest group for the attention product only (a padded RoPE pair is zero, so it adds
  nothing to a score or an output), which keeps one head_dim per layer for the kernels and the cache;
* o_proj and down_proj may carry an output bias (bias compensation) independently of q/k/v/gate/up;
* per-layer q/k RMSNorm (Qwen3) and sliding windows (Mistral, Qwen2) are kept.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import (
    create_causal_mask,
    create_sliding_window_causal_mask,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
    rotate_half,
)

from .configuration_amoeba import AmoebaConfig

#: transformers 5.24 renamed ``past_key_values`` to ``cache`` (in forward arguments, model outputs
#: and the mask helpers); earlier 5.x releases know only the old name. Both are accepted here.
_CACHE_FIELD = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def _one_cache(cache, past_key_values):
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once: as `cache` (or, before transformers 5.24, `past_key_values`)")
    return cache if cache is not None else past_key_values


class AmoebaAttention(nn.Module):
    def __init__(self, config: AmoebaConfig, spec: dict, layer_idx: int, cache_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = cache_idx  # the KV-cache slot (attention layers are numbered contiguously)
        self.decoder_layer_idx = layer_idx
        self.head_dim = spec["head_dim"]
        self.num_heads = spec["num_attention_heads"]
        self.num_key_value_heads = spec["num_key_value_heads"]
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = config.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout or 0.0
        self.is_causal = True
        self.sliding_window = spec["sliding_window"]
        self.head_channels = spec["head_channels"]
        packed = bool(self.head_channels) and isinstance(self.head_channels[0], list)
        #: channels per head of each KV group when the groups differ (packed rows), else None
        self.group_head_dims = [len(c) for c in self.head_channels] if packed else None
        dims = self.group_head_dims or [self.head_dim] * self.num_key_value_heads
        kv_width = sum(dims)
        q_width = self.num_key_value_groups * kv_width
        self._rope_index: torch.Tensor | None = None  # not a buffer: loaders re-initialise buffers
        self._layout: dict[str, torch.Tensor] | None = None
        h = config.hidden_size
        self.q_proj = nn.Linear(h, q_width, bias=spec["qkv_bias"])
        self.k_proj = nn.Linear(h, kv_width, bias=spec["qkv_bias"])
        self.v_proj = nn.Linear(h, kv_width, bias=spec["qkv_bias"])
        self.o_proj = nn.Linear(q_width, h, bias=spec["o_bias"])
        if spec["qk_norm"]:
            self.q_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def packed_layout(self, device) -> dict[str, torch.Tensor]:
        """Index tensors of a packed layer: where each padded head slot reads its row (``pad_*``; the
        last index, one past the rows, reads an appended zero), the source RoPE channel of each slot
        (``rope_*``), and the padded slot of every packed q row (``unpad``).

        Group g keeps channels ``c`` (sorted RoPE pairs: first halves, then their partners); in a head
        padded to ``head_dim`` = 2M, its i-th first half sits in slot i and its partner in slot M + i,
        so rotate-half still pairs them; the other slots stay zero."""
        if self._layout is not None and self._layout["unpad"].device == device:
            return self._layout
        hd, qpg = self.head_dim, self.num_key_value_groups
        q_zero, kv_zero = self.q_proj.out_features, self.k_proj.out_features
        pad_q, pad_kv, rope_q, rope_kv, unpad = [], [], [], [], []
        q_at = kv_at = 0
        for g, channels in enumerate(self.head_channels):
            d = len(channels)
            slots = list(range(d // 2)) + list(range(hd // 2, hd // 2 + d // 2))
            rope = [0] * hd
            for i, slot in enumerate(slots):
                rope[slot] = channels[i]

            def padded(start: int, zero: int) -> list[int]:
                row = [zero] * hd
                for i, slot in enumerate(slots):
                    row[slot] = start + i
                return row

            pad_kv += padded(kv_at, kv_zero)
            rope_kv.append(rope)
            for q in range(qpg):
                pad_q += padded(q_at + q * d, q_zero)
                rope_q.append(rope)
                unpad += [(g * qpg + q) * hd + slot for slot in slots]
            kv_at += d
            q_at += qpg * d
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        self._layout = {"pad_q": as_long(pad_q), "pad_kv": as_long(pad_kv), "rope_q": as_long(rope_q),
                        "rope_kv": as_long(rope_kv), "unpad": as_long(unpad)}
        return self._layout

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        cos, sin = position_embeddings
        layout = None
        if self.group_head_dims is not None:
            layout = self.packed_layout(hidden_states.device)
            pad = lambda x, index: torch.nn.functional.pad(x, (0, 1)).index_select(-1, index)  # noqa: E731
            q, k, v = pad(q, layout["pad_q"]), pad(k, layout["pad_kv"]), pad(v, layout["pad_kv"])
        q, k, v = q.view(hidden_shape), k.view(hidden_shape), v.view(hidden_shape)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if layout is not None:  # a RoPE frequency per head and slot: [batch, heads, seq, head_dim]
            def rotate(x, index):
                c, s_ = cos[..., index].transpose(1, 2), sin[..., index].transpose(1, 2)
                return x * c + rotate_half(x) * s_
            q, k = rotate(q, layout["rope_q"]), rotate(k, layout["rope_kv"])
        else:
            if self.head_channels is not None:
                if self._rope_index is None or self._rope_index.device != cos.device:
                    self._rope_index = torch.tensor(self.head_channels, dtype=torch.long, device=cos.device)
                cos, sin = cos.index_select(-1, self._rope_index), sin.index_select(-1, self._rope_index)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward)
        out, weights = attention_interface(
            self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling, sliding_window=self.sliding_window, **kwargs)
        out = out.reshape(*input_shape, -1)
        if layout is not None:
            out = out.index_select(-1, layout["unpad"])
        return self.o_proj(out.contiguous()), weights


class AmoebaMLP(nn.Module):
    def __init__(self, config: AmoebaConfig, spec: dict):
        super().__init__()
        h, i = config.hidden_size, spec["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=spec["mlp_bias"])
        self.up_proj = nn.Linear(h, i, bias=spec["mlp_bias"])
        self.down_proj = nn.Linear(i, h, bias=spec["down_bias"])
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class AmoebaDecoderLayer(nn.Module):
    def __init__(self, config: AmoebaConfig, layer_idx: int, cache_idx: int):
        super().__init__()
        spec = config.layer_specs[layer_idx]
        self.has_attention = spec["num_key_value_heads"] > 0
        self.has_mlp = spec["intermediate_size"] > 0
        self.attention_type = "sliding_attention" if spec["sliding_window"] else "full_attention"
        if self.has_attention:
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = AmoebaAttention(config, spec, layer_idx, cache_idx)
        else:
            self.input_layernorm = self.self_attn = None
        if self.has_mlp:
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = AmoebaMLP(config, spec)
        else:
            self.post_attention_layernorm = self.mlp = None

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None, **kwargs):
        if self.has_attention:
            attn, _ = self.self_attn(self.input_layernorm(hidden_states), position_embeddings=position_embeddings,
                                     attention_mask=attention_mask, past_key_values=past_key_values, **kwargs)
            hidden_states = hidden_states + attn
        if self.has_mlp:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class AmoebaPreTrainedModel(PreTrainedModel):
    config_class = AmoebaConfig
    config: AmoebaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["AmoebaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True


class AmoebaModel(AmoebaPreTrainedModel):
    def __init__(self, config: AmoebaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        layers, cache_idx = [], 0
        for i, spec in enumerate(config.layer_specs):
            layers.append(AmoebaDecoderLayer(config, i, cache_idx))
            cache_idx += spec["num_key_value_heads"] > 0
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.has_sliding_layers = any(l.attention_type == "sliding_attention" for l in layers)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
                inputs_embeds=None, use_cache=None, past_key_values: Cache | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        past_key_values = _one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)
        mask_kwargs = {"config": self.config, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                       _CACHE_FIELD: past_key_values, "position_ids": position_ids}
        masks = {"full_attention": create_causal_mask(**mask_kwargs)}
        if self.has_sliding_layers:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=masks[layer.attention_type],
                                  position_embeddings=position_embeddings, past_key_values=past_key_values,
                                  position_ids=position_ids, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), **{_CACHE_FIELD: past_key_values})


class AmoebaForCausalLM(AmoebaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: AmoebaConfig):
        super().__init__(config)
        self.model = AmoebaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0,
                past_key_values=None, **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=_one_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
                         **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)})
