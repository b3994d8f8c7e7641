"""Model anatomy: what can be pruned in a loaded model, and where each linear lives.

An :class:`ArchitectureAdapter` (one per model family, registered through
``amoeba_register_architectures``) reads a ``PreTrainedModel`` and returns an :class:`Anatomy`.
Everything downstream (metrics, plans, surgery, exporters) addresses modules through the anatomy's
qualified names, so nobody else hard-codes ``model.model.layers[i].self_attn.q_proj``.

The adapters shipped with the host live beside this module: :mod:`amoeba_plugin.anatomy.llama` (Llama,
Mistral, Qwen2, Qwen3 and the project's own ``amoeba`` architecture); ``amoeba_plugin.builtin``
registers them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..errors import UnsupportedModelError

#: roles of the per-layer modules an anatomy may name
ATTENTION_ROLES = ("q", "k", "v", "o")
MLP_ROLES = ("gate", "up", "down")
NORM_ROLES = ("input_norm", "post_attention_norm", "q_norm", "k_norm")


@dataclass(frozen=True)
class LayerAnatomy:
    """One decoder layer: its prunable units and the qualified names of its modules."""

    index: int
    num_query_heads: int
    num_kv_groups: int
    head_dim: int
    intermediate_size: int
    modules: dict[str, str] = field(hash=False, compare=True)
    #: head channels actually present (indices into the source head_dim), None means all of them
    head_channels: tuple[int, ...] | None = None
    #: channels per head of each KV group when the groups differ (a searched subnet packs its heads:
    #: group g's K/V head and query heads have ``group_head_dims[g]`` rows each); ``head_dim`` is the
    #: largest. None: every head has ``head_dim`` rows
    group_head_dims: tuple[int, ...] | None = None

    @property
    def has_attention(self) -> bool:
        return self.num_kv_groups > 0

    @property
    def has_mlp(self) -> bool:
        return self.intermediate_size > 0

    @property
    def queries_per_group(self) -> int:
        return self.num_query_heads // self.num_kv_groups if self.num_kv_groups else 0

    def group_dims(self) -> list[int]:
        """Rows per head of each KV group, as laid out in the model's weights."""
        if self.group_head_dims is not None:
            return list(self.group_head_dims)
        return [self.head_dim] * self.num_kv_groups

    @property
    def q_width(self) -> int:
        """Rows of q_proj (= columns of o_proj)."""
        return self.queries_per_group * sum(self.group_dims())

    @property
    def kv_width(self) -> int:
        """Rows of k_proj (= rows of v_proj)."""
        return sum(self.group_dims())


@dataclass(frozen=True)
class Anatomy:
    """The prunable structure of a model. Cheap to build; holds names, never tensors."""

    family: str
    model_type: str
    hidden_size: int
    vocab_size: int
    layers: tuple[LayerAnatomy, ...]
    embed: str
    final_norm: str
    lm_head: str
    layers_path: str
    tied_embeddings: bool
    rope: bool = True
    qk_norm: bool = False
    #: the head_dim that RoPE frequencies and the attention scale were trained with
    rope_head_dim: int = 0
    #: biases present in the source, by role (e.g. {"q", "k", "v"} for Qwen2)
    biases: frozenset[str] = frozenset()
    fingerprint: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, index: int) -> LayerAnatomy:
        return self.layers[index]

    def shape_signature(self) -> str:
        """Architecture part of the fingerprint: equal for models of the same shape."""
        return self.fingerprint.split("-")[0]

    def describe(self) -> dict:
        """Plain summary for ``amoeba inspect``."""
        first = self.layers[0] if self.layers else None
        uniform = len({(l.num_query_heads, l.num_kv_groups, l.head_dim, l.intermediate_size, l.group_head_dims)
                       for l in self.layers}) <= 1
        out = {"family": self.family, "model_type": self.model_type, "layers": self.num_layers,
               "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
               "tied_embeddings": self.tied_embeddings, "qk_norm": self.qk_norm,
               "uniform_layers": uniform, "fingerprint": self.fingerprint}
        if first is not None and uniform:
            out.update(query_heads=first.num_query_heads, kv_groups=first.num_kv_groups,
                       head_dim=first.head_dim, intermediate_size=first.intermediate_size)
        else:
            out["per_layer"] = [dict(query_heads=l.num_query_heads, kv_groups=l.num_kv_groups,
                                     head_dim=l.head_dim, intermediate_size=l.intermediate_size,
                                     **({"group_head_dims": list(l.group_head_dims)} if l.group_head_dims else {}))
                                for l in self.layers]
        return out


class ArchitectureAdapter:
    """Base class for a model-family adapter. Subclass, set ``name`` and ``model_types``,
    implement :meth:`anatomy`, and register an instance through ``amoeba_register_architectures``."""

    name: str = ""
    model_types: tuple[str, ...] = ()

    def matches(self, model) -> bool:
        return getattr(model.config, "model_type", None) in self.model_types

    def anatomy(self, model) -> Anatomy:  # pragma: no cover - abstract
        raise NotImplementedError


def fingerprint(model, shape_items: list) -> str:
    """``<shape hash>-<weights hash>``: the first half changes with the architecture, the second with
    the weights (sampled, and rounded through fp16 so fp16 and fp32 loads of one checkpoint agree)."""
    shape = hashlib.sha256(repr(shape_items).encode()).hexdigest()[:16]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            if p.is_floating_point() and p.numel():
                flat = p.reshape(-1)
                sample = flat[:: max(1, flat.numel() // 64)][:64].detach().to("cpu", torch.float16)
                h.update(name.encode())
                h.update(sample.numpy().tobytes())
    return f"{shape}-{h.hexdigest()[:16]}"


def get_adapter(model) -> ArchitectureAdapter:
    """The registered adapter for ``model``, or an error naming the family and the supported ones."""
    from ..plugins import registry

    adapters = registry("architectures")
    for adapter in adapters.values():
        if adapter.matches(model):
            return adapter
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    supported = sorted({t for a in adapters.values() for t in a.model_types})
    raise UnsupportedModelError(
        f"model family '{model_type}' is not supported (supported: {', '.join(supported)})",
        "add an ArchitectureAdapter for it and register it with the amoeba_register_architectures "
        "hook (docs/plugins.md shows one in a few lines)")


def anatomy_of(model) -> Anatomy:
    """Shortcut: ``get_adapter(model).anatomy(model)``."""
    return get_adapter(model).anatomy(model)
