"""Cost: what every prunable unit of a model costs, in parameters or in MACs per token, counted once.

A :class:`CostModel` reads an :class:`~amoeba_plugin.anatomy.Anatomy` once and holds the cost of each
unit a plan can keep or drop: the base (embeddings, LM head, final norm), per layer the fixed parts of
its attention and MLP (norms, the source's output biases), per KV group, per query head, per RoPE pair
of head channels, per MLP channel, and per hidden channel. :meth:`CostModel.measure` adds up the kept
units of a :class:`~amoeba_plugin.plan.Plan` without resolving it, and equals
``Plan.num_parameters`` / ``Plan.macs_per_token`` exactly (tests check every plan type).

Each cost is linear in the number of hidden channels kept (a q_proj row has ``hidden`` weights), so the
model keeps every term as ``per_hidden * hidden + fixed``; the unit costs it shows are those of the
full hidden size. Methods get one through ``Budget.bind(anatomy).costs`` (docs/plugins.md,
"Counting cost").
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import AmoebaError

#: what a cost model counts: parameters, or multiply-accumulates to produce one token's logits
UNITS = ("parameters", "macs")


@dataclass(frozen=True)
class _Term:
    """``per_hidden * hidden + fixed``."""

    per_hidden: int = 0
    fixed: int = 0

    def at(self, hidden: int) -> int:
        return self.per_hidden * hidden + self.fixed


@dataclass(frozen=True)
class LayerCosts:
    """The costs of one source layer's units, at the full hidden size."""

    index: int
    #: paid while the layer keeps any KV group: input norm, per-head q/k norms (Qwen3; channels inside
    #: such heads are never pruned), the source's o_proj bias
    attention: int
    #: paid while the layer keeps any MLP channel: post-attention norm, the source's down_proj bias
    mlp: int
    #: per KV group: its K/V rows and its query heads' q rows and o_proj columns
    kv_group: tuple[int, ...]
    #: per KV group: one of its query heads (q rows and o_proj columns)
    query_head: tuple[int, ...]
    #: per KV group: one RoPE pair of head channels (j, j + head_dim/2) in its K/V head and all its
    #: query heads
    head_pair: tuple[int, ...]
    #: one MLP channel (gate/up rows, down column)
    mlp_channel: int
    #: the whole layer as the source has it
    whole: int


class CostModel:
    """Per-unit costs of ``anatomy`` in ``unit`` ("parameters" or "macs"), computed once.

    ``embeddings=False`` leaves out the embedding matrix and the LM head (parameters only: the LM
    head's MACs always count); ``norms=False`` leaves out the norm weights (what remains are the
    linears, with their biases); ``context`` adds the attention over that many cached tokens to the
    MACs. :meth:`measure` counts a plan; the attributes hold the units' costs.
    """

    def __init__(self, anatomy, unit: str = "parameters", *, embeddings: bool = True, norms: bool = True,
                 context: int = 0):
        if unit not in UNITS:
            raise AmoebaError(f"unknown cost unit '{unit}'", f"use one of: {', '.join(UNITS)}")
        self.anatomy, self.unit = anatomy, unit
        self.embeddings, self.norms, self.context = embeddings, norms, context
        self.hidden_size = anatomy.hidden_size
        b = anatomy.biases
        if unit == "parameters":
            norm = int(norms)
            embed = anatomy.vocab_size * (1 if anatomy.tied_embeddings else 2) if embeddings else 0
            self._base = _Term(embed + norm)
            self._attention = _Term(norm + int("o" in b))
            self._mlp = _Term(norm + int("down" in b))
            self._bias = (_Term(int("o" not in b)), _Term(int("down" not in b)))
            self._q_row = _Term(2, int("q" in b))
            self._kv_row = _Term(2, int("k" in b) + int("v" in b))
            self._channel = _Term(3, int("gate" in b) + int("up" in b))
            self._head_norm = [2 * norm if "q_norm" in la.modules else 0 for la in anatomy.layers]
        else:
            self._base = _Term(anatomy.vocab_size)
            self._attention = self._mlp = _Term()
            self._bias = (_Term(), _Term())
            self._q_row = _Term(2, 2 * context)
            self._kv_row = _Term(2)
            self._channel = _Term(3)
            self._head_norm = [0] * anatomy.num_layers
        hidden = self.hidden_size
        #: embeddings, LM head and final norm
        self.base: int = self._base.at(hidden)
        #: one q_proj row with its o_proj column; one k_proj row with one v_proj row (biases included)
        self.q_row: int = self._q_row.at(hidden)
        self.kv_row: int = self._kv_row.at(hidden)
        #: what a plan's ``output_bias`` adds to a kept attention and to a kept MLP (bias compensation)
        self.output_bias: tuple[int, int] = (self._bias[0].at(hidden), self._bias[1].at(hidden))
        layers, per_hidden = [], self._base.per_hidden
        for la, head_norm in zip(anatomy.layers, self._head_norm):
            dims, qpg = la.group_dims(), la.queries_per_group
            q_row, kv_row, channel = self.q_row, self.kv_row, self._channel.at(hidden)
            attention = self._attention.at(hidden) + head_norm * max(dims) if la.has_attention else 0
            mlp = self._mlp.at(hidden) if la.has_mlp else 0
            kv_group = tuple(d * (qpg * q_row + kv_row) for d in dims)
            whole = ((attention + sum(kv_group)) if la.has_attention else 0) + mlp + la.intermediate_size * channel
            layers.append(LayerCosts(la.index, attention, mlp, kv_group, tuple(d * q_row for d in dims),
                                     tuple(2 * (qpg * q_row + kv_row) for _ in dims), channel, whole))
            if la.has_attention:
                per_hidden += (self._attention.per_hidden + la.q_width * self._q_row.per_hidden
                               + la.kv_width * self._kv_row.per_hidden)
            if la.has_mlp:
                per_hidden += self._mlp.per_hidden + la.intermediate_size * self._channel.per_hidden
        self.layers: tuple[LayerCosts, ...] = tuple(layers)
        #: one hidden channel, everywhere it appears in the full model
        self.hidden_channel: int = per_hidden
        #: the whole model
        self.full: int = self.base + sum(l.whole for l in layers)

    def measure(self, plan) -> int:
        """The cost of ``plan`` (a :class:`~amoeba_plugin.plan.Plan` of this anatomy), exactly."""
        hidden = self.hidden_size if plan.hidden_channels is None else len(plan.hidden_channels)
        attention = self._attention.at(hidden) + (self._bias[0].at(hidden) if plan.output_bias else 0)
        mlp = self._mlp.at(hidden) + (self._bias[1].at(hidden) if plan.output_bias else 0)
        q_row, kv_row, channel = self._q_row.at(hidden), self._kv_row.at(hidden), self._channel.at(hidden)
        total = self._base.at(hidden)
        for lp in plan.layers:
            la = self.anatomy.layer(lp.index)
            groups, q_width, kv_width, head_dim = attention_widths(lp, la)
            if groups:
                total += attention + q_width * q_row + kv_width * kv_row + self._head_norm[lp.index] * head_dim
            inter = la.intermediate_size if lp.mlp_channels is None else len(lp.mlp_channels)
            if inter:
                total += mlp + inter * channel
        return total

    def describe(self) -> dict:
        """Plain summary (the first layer's unit costs; ``uniform`` says whether all layers share them)."""
        first = self.layers[0] if self.layers else None
        out = {"unit": self.unit, "embeddings": self.embeddings, "norms": self.norms, "full": self.full,
               "base": self.base, "hidden_channel": self.hidden_channel, "q_row": self.q_row, "kv_row": self.kv_row,
               "uniform": len({(l.attention, l.mlp, l.kv_group, l.mlp_channel) for l in self.layers}) <= 1}
        if first is not None:
            out.update(attention=first.attention, mlp=first.mlp, kv_group=list(first.kv_group),
                       query_head=list(first.query_head), head_pair=list(first.head_pair),
                       mlp_channel=first.mlp_channel)
        return out


def attention_widths(lp, layer) -> tuple[int, int, int, int]:
    """Of one layer plan (unresolved) and its source layer: ``(kept KV groups, q_proj rows, k_proj
    rows, widest kept head)``, as :meth:`~amoeba_plugin.plan.Plan.shape` counts them."""
    groups = range(layer.num_kv_groups) if lp.kv_groups is None else lp.kv_groups
    if not groups:
        return 0, 0, 0, 0
    if lp.head_channels is None:
        dims = [layer.group_head_dims[g] for g in groups] if layer.group_head_dims is not None \
            else [layer.head_dim] * len(groups)
    elif lp.per_group_channels:
        dims = [len(c) for c in lp.head_channels]
    else:
        dims = [len(lp.head_channels)] * len(groups)
    if lp.query_heads is None:
        q_width = layer.queries_per_group * sum(dims[: len(groups)])
    else:
        q_width = sum(len(q) * d for q, d in zip(lp.query_heads, dims))
    return len(groups), q_width, sum(dims), max(dims)


__all__ = ["UNITS", "CostModel", "LayerCosts", "attention_widths"]
