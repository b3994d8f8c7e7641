"""The Llama-family adapter: Llama, Mistral, Qwen2, Qwen3 (q/k norms) and the project's own
per-layer ``amoeba`` architecture, which shares Llama's module names."""
from __future__ import annotations

from . import Anatomy, ArchitectureAdapter, LayerAnatomy, fingerprint


class LlamaFamilyAdapter(ArchitectureAdapter):
    """Llama-style decoders: ``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``.

    Shapes are read from the modules themselves (not the config), so a model whose layers differ
    (the ``amoeba`` architecture, or a user's hand-edited model) gets a correct per-layer anatomy.
    """

    def __init__(self, name: str, model_types: tuple[str, ...]):
        self.name = name
        self.model_types = model_types

    def anatomy(self, model) -> Anatomy:
        config = model.config
        base = "model"
        layers = []
        biases: set[str] = set()
        qk_norm = False
        for i, layer in enumerate(model.model.layers[: config.num_hidden_layers]):
            prefix = f"{base}.layers.{i}"
            modules = {}
            attn = getattr(layer, "self_attn", None)
            mlp = getattr(layer, "mlp", None)
            nq = nkv = 0
            head_dim = getattr(attn, "head_dim", 0) if attn is not None else 0
            group_dims = getattr(attn, "group_head_dims", None) if attn is not None else None
            if group_dims is not None:  # an amoeba layer whose KV groups keep different channels
                nq, nkv = attn.num_heads, attn.num_key_value_heads
            elif attn is not None:
                nq = attn.q_proj.out_features // head_dim
                nkv = attn.k_proj.out_features // head_dim
            if attn is not None:
                for role in ("q", "k", "v", "o"):
                    modules[role] = f"{prefix}.self_attn.{role}_proj"
                    if getattr(attn, f"{role}_proj").bias is not None:
                        biases.add(role)
                modules["input_norm"] = f"{prefix}.input_layernorm"
                if getattr(attn, "q_norm", None) is not None:
                    qk_norm = True
                    modules["q_norm"] = f"{prefix}.self_attn.q_norm"
                    modules["k_norm"] = f"{prefix}.self_attn.k_norm"
            inter = 0
            if mlp is not None:
                inter = mlp.up_proj.out_features
                for role in ("gate", "up", "down"):
                    modules[role] = f"{prefix}.mlp.{role}_proj"
                    if getattr(mlp, f"{role}_proj").bias is not None:
                        biases.add(role)
                modules["post_attention_norm"] = f"{prefix}.post_attention_layernorm"
            channels = getattr(attn, "head_channels", None) if attn is not None and group_dims is None else None
            layers.append(LayerAnatomy(index=i, num_query_heads=nq, num_kv_groups=nkv, head_dim=head_dim,
                                       intermediate_size=inter, modules=modules,
                                       head_channels=tuple(channels) if channels is not None else None,
                                       group_head_dims=tuple(group_dims) if group_dims is not None else None))
        rope_head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        hidden = model.model.embed_tokens.embedding_dim
        tied = bool(getattr(config, "tie_word_embeddings", False))
        shape_items = [config.model_type, hidden, config.vocab_size, tied,
                       [(l.num_query_heads, l.num_kv_groups, l.head_dim, l.intermediate_size)
                        + ((l.group_head_dims,) if l.group_head_dims else ()) for l in layers]]
        return Anatomy(
            family=self.name, model_type=config.model_type, hidden_size=hidden,
            vocab_size=model.model.embed_tokens.num_embeddings, layers=tuple(layers),
            embed=f"{base}.embed_tokens", final_norm=f"{base}.norm", lm_head="lm_head",
            layers_path=f"{base}.layers", tied_embeddings=tied, rope=True, qk_norm=qk_norm,
            rope_head_dim=rope_head_dim, biases=frozenset(biases),
            fingerprint=fingerprint(model, shape_items))


__all__ = ["LlamaFamilyAdapter"]
