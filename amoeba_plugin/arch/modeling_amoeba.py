"""Modeling of the ``amoeba`` architecture: Llama's maths with a shape per layer.

Differences from ``LlamaForCausalLM``, each needed to express a pruned model exactly:

* every layer has its own query heads, KV heads, head_dim and MLP width; either sub-block may be
  absent (a layer with no attention keeps no KV-cache slot: cache indices count attention layers);
* heads may keep a subset of their channels; RoPE then uses the frequencies of the kept channels
  (``head_channels``) and the attention scale stays ``source_head_dim ** -0.5``;
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
)

from .configuration_amoeba import AmoebaConfig


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
        self._rope_index: torch.Tensor | None = None  # not a buffer: loaders re-initialise buffers
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=spec["qkv_bias"])
        self.k_proj = nn.Linear(h, self.num_key_value_heads * self.head_dim, bias=spec["qkv_bias"])
        self.v_proj = nn.Linear(h, self.num_key_value_heads * self.head_dim, bias=spec["qkv_bias"])
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=spec["o_bias"])
        if spec["qk_norm"]:
            self.q_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape)
        k = self.k_proj(hidden_states).view(hidden_shape)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
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
        out = out.reshape(*input_shape, -1).contiguous()
        return self.o_proj(out), weights


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

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values: Cache | None = None,
                inputs_embeds=None, use_cache=None, **kwargs) -> BaseModelOutputWithPast:
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
        mask_kwargs = dict(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           past_key_values=past_key_values, position_ids=position_ids)
        masks = {"full_attention": create_causal_mask(**mask_kwargs)}
        if self.has_sliding_layers:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=masks[layer.attention_type],
                                  position_embeddings=position_embeddings, past_key_values=past_key_values,
                                  position_ids=position_ids, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), past_key_values=past_key_values)


class AmoebaForCausalLM(AmoebaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: AmoebaConfig):
        super().__init__(config)
        self.model = AmoebaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)
