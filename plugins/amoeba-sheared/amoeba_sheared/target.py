"""Target shapes: what a Sheared run prunes to, and how a budget becomes one.

A :class:`Shape` is the uniform shape of a model (layers, query heads and KV heads per layer, MLP
width, hidden size; ``head_dim`` is kept). A ``shape=`` budget names it directly (missing keys keep
the source's value); a parameter budget becomes the nearest shape the family's config can express
(:func:`nearest_shape`). :func:`shape_plan` turns a shape and unit scores (mask logits, or any
metric) into the host's :class:`~amoeba_plugin.plan.Plan`, keeping the top units of every row.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import InvalidBudgetError, UnsupportedModelError
from amoeba_plugin.plan import LayerPlan, Plan, source_info
from amoeba_plugin.pruning.allocation import top_indices

#: the mask families, in the order logs and docs list them
STRUCTURES = ("layer", "kv", "query", "intermediate", "hidden")


@dataclass(frozen=True)
class Shape:
    """A uniform model shape; ``heads`` and ``kv_heads`` count per layer."""

    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    hidden: int

    @property
    def queries_per_group(self) -> int:
        return self.heads // self.kv_heads

    def counts(self) -> dict[str, int]:
        """Units kept per row of every mask family (per layer for kv/query/intermediate)."""
        return {"layer": self.layers, "kv": self.kv_heads, "query": self.queries_per_group,
                "intermediate": self.intermediate, "hidden": self.hidden}

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return "shape=" + ",".join(f"{k}:{v}" for k, v in self.to_dict().items())


def source_shape(anatomy) -> Shape:
    """The source model's shape; Sheared prunes uniform models whose every layer has attention and an MLP."""
    first = anatomy.layers[0]
    key = (first.num_query_heads, first.num_kv_groups, first.head_dim, first.intermediate_size)
    if any((l.num_query_heads, l.num_kv_groups, l.head_dim, l.intermediate_size) != key or l.head_channels is not None
           or not l.has_attention or not l.has_mlp for l in anatomy.layers):
        raise UnsupportedModelError("Sheared pruning needs a source model whose layers all have the same shape "
                                    "(this one is heterogeneous, or has layers without attention or MLP)",
                                    "prune the uniform model it came from, or use another method (see `amoeba methods`)")
    return Shape(anatomy.num_layers, first.num_query_heads, first.num_kv_groups, first.intermediate_size,
                 anatomy.hidden_size)


def shape_of_config(config) -> Shape:
    """The shape a stock config describes (checked before any weights load)."""
    try:
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        return Shape(int(config.num_hidden_layers), heads, kv, int(config.intermediate_size), int(config.hidden_size))
    except (AttributeError, TypeError) as exc:
        raise UnsupportedModelError(f"the model config has no uniform Llama-style shape ({exc})",
                                    "Sheared prunes Llama-family models (llama, mistral, qwen2, qwen3)") from None


def resolve_target(source: Shape, value: dict) -> Shape:
    """A ``shape=`` budget's dict completed from the source and checked: every count within the
    source's, and equal query heads in every KV group (missing ``kv_heads``: keep the groups (GQA) or
    equal the heads (MHA); missing ``heads``: keep the queries per group)."""
    value = dict(value)
    for key, want in value.items():  # what the user wrote is checked (and named) before anything derived from it
        have = getattr(source, key)
        if not 1 <= want <= have:
            raise InvalidBudgetError(f"target {key}={want} is outside 1..{have}, the source model's {key}",
                                     f"pick {key} between 1 and {have}")
    mha = source.kv_heads == source.heads
    kv = value.get("kv_heads", value.get("heads", source.heads) if mha else source.kv_heads)
    heads = value.get("heads", kv * source.queries_per_group)
    target = Shape(value.get("layers", source.layers), heads, kv, value.get("intermediate", source.intermediate),
                   value.get("hidden", source.hidden))
    for key, want in target.to_dict().items():
        have = getattr(source, key)
        if not 1 <= want <= have:  # only a derived count gets here: say what it came from
            given = ", ".join(f"{k}={v}" for k, v in value.items())
            raise InvalidBudgetError(f"the target {given} implies {key}={want} (the source keeps "
                                     f"{source.queries_per_group} query heads per KV group), outside 1..{have}",
                                     f"also give {key} explicitly, between 1 and {have}")
    if heads % kv or target.queries_per_group > source.queries_per_group:
        raise InvalidBudgetError(
            f"target heads={heads} with kv_heads={kv} does not keep an equal number of query heads per KV group "
            f"(at most {source.queries_per_group} per group in the source)",
            f"make heads a multiple of kv_heads, e.g. heads={kv * max(1, min(source.queries_per_group, heads // kv or 1))}")
    return target


def family_expresses(config, shape: Shape) -> bool:
    """Whether the family's own config accepts ``shape`` (transformers 5 validates e.g.
    ``hidden_size % num_attention_heads == 0`` even with ``head_dim`` set)."""
    if getattr(config, "model_type", "") == "amoeba":
        return False
    data = config.to_dict()
    data.update(num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                intermediate_size=shape.intermediate, hidden_size=shape.hidden,
                head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    for key in ("layer_types",):
        if data.get(key) is not None:
            data[key] = data[key][: shape.layers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            type(config).from_dict(data)
    except Exception:
        return False
    return True


def shape_plan(anatomy, shape: Shape, scores: dict | None = None, **provenance) -> Plan:
    """The plan keeping ``shape``: the top ``layers`` layers, and in every kept layer the top KV groups,
    the top query heads (one choice shared by every group, so GQA stays regular), the top MLP
    channels; the top hidden channels. ``scores[family]`` holds a 1-D tensor for ``layer`` and
    ``hidden`` and a ``[layers, units]`` tensor for the others; missing scores keep the first units
    (enough for counting parameters)."""
    source = source_shape(anatomy)
    scores = scores or {}

    def top(family, n, k, row=None):
        if k >= n:
            return None
        s = scores.get(family)
        if s is None:
            return list(range(k))
        return top_indices((s if row is None else s[row]).tolist(), k)

    layers = top("layer", source.layers, shape.layers) or list(range(source.layers))
    plans = []
    for i in layers:
        groups = top("kv", source.kv_heads, shape.kv_heads, i)
        queries = top("query", source.queries_per_group, shape.queries_per_group, i)
        kept_groups = len(groups) if groups is not None else source.kv_heads
        plans.append(LayerPlan(i, kv_groups=groups, query_heads=None if queries is None else [queries] * kept_groups,
                               mlp_channels=top("intermediate", source.intermediate, shape.intermediate, i)))
    return Plan(plans, source=source_info(anatomy), hidden_channels=top("hidden", source.hidden, shape.hidden),
                provenance=dict(provenance))


def metric_scores(model, anatomy, metric: str = "magnitude", calibration=None) -> dict:
    """:func:`shape_plan` scores from a host importance metric (e.g. ``magnitude``, the uniform
    baseline): a query-in-group index scores the sum of its heads over the groups, as the shared
    query mask treats it."""
    import torch

    from amoeba_plugin.plugins import get

    source = source_shape(anatomy)
    units = get("metrics", metric).score_units(model, anatomy, ("layer", "kv_group", "query_head", "mlp_channel",
                                                                "hidden_channel"), calibration)
    heads = torch.stack([s.float() for s in units["query_head"]]).view(source.layers, source.kv_heads, -1)
    return {"layer": units["layer"].float(), "kv": torch.stack([s.float() for s in units["kv_group"]]),
            "query": heads.sum(1), "intermediate": torch.stack([s.float() for s in units["mlp_channel"]]),
            "hidden": units["hidden_channel"].float()}


def nearest_shape(anatomy, config, budget: Budget) -> Shape:
    """The shape a parameter budget (``params``, ``nonembed``, ``count``) becomes: every layer and
    KV group kept, one width factor ``w`` applied to the query heads per group (per head on MHA), the
    MLP width and the hidden size, snapped to what the family's config expresses (hidden a multiple
    of the heads and of 8, MLP width a multiple of 8); among the query-head counts, the shape whose
    head fraction is closest to ``w`` (ties: more parameters), each with the largest ``w`` that
    fits. Layers go only when no width fits (then the same search at fewer layers)."""
    if budget.kind == "shape":
        return resolve_target(source_shape(anatomy), budget.value)
    if budget.kind not in ("params", "nonembed", "count"):
        raise InvalidBudgetError(f"the Sheared method cannot meet a '{budget.kind}' budget",
                                 "use shape=..., or a params, nonembed or count budget")
    source = source_shape(anatomy)
    mha = source.kv_heads == source.heads

    def snap(layers, unit_kept, w):
        kv = unit_kept if mha else source.kv_heads
        heads = kv * (1 if mha else unit_kept)
        quantum = math.lcm(heads, 8)
        hidden = max(quantum, int(source.hidden * w) // quantum * quantum)
        inter = max(8, int(source.intermediate * w) // 8 * 8)
        if hidden > source.hidden or inter > source.intermediate:
            hidden, inter = min(hidden, source.hidden), min(inter, source.intermediate)
        return Shape(layers, heads, kv, inter, hidden)

    bound = budget.bind(anatomy)

    def fits(shape):
        return family_expresses(config, shape) and bound.fits(shape_plan(anatomy, shape))

    units = source.heads if mha else source.queries_per_group
    for layers in range(source.layers, 0, -1):
        best = None
        for kept in range(units, 0, -1):
            lo, hi = 0.0, 1.0
            if not fits(snap(layers, kept, lo)):
                continue
            for _ in range(30):  # the largest w whose snapped shape fits (monotone for a fixed head count)
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if fits(snap(layers, kept, mid)) else (lo, mid)
            shape = snap(layers, kept, lo)
            if not fits(shape):
                continue
            params = shape_plan(anatomy, shape).num_parameters(anatomy)
            key = (abs(kept / units - lo), -params)
            if best is None or key < best[0]:
                best = (key, shape)
        if best is not None:
            return best[1]
    raise InvalidBudgetError(f"no shape of this model that its config can express fits {budget}",
                             "raise the budget, or give an explicit shape=... target")


def target_sparsity(source: Shape, target: Shape) -> dict[str, float]:
    """The final sparsity of every pruned mask family, ``1 - target / source`` (Sheared's targets)."""
    s, t = source.counts(), target.counts()
    return {k: 1.0 - t[k] / s[k] for k in STRUCTURES if t[k] < s[k]}


def plan_is_shape(plan: Plan, anatomy, shape: Shape) -> bool:
    """Whether a plan keeps exactly ``shape`` in every layer."""
    hidden = anatomy.hidden_size if plan.hidden_channels is None else len(plan.hidden_channels)
    rows = plan.shape(anatomy)
    return hidden == shape.hidden and len(rows) == shape.layers and all(
        (r["query_heads"], r["kv_groups"], r["intermediate_size"]) == (shape.heads, shape.kv_heads, shape.intermediate)
        for r in rows)


__all__ = ["STRUCTURES", "Shape", "family_expresses", "metric_scores", "nearest_shape", "plan_is_shape", "resolve_target",
           "shape_of_config", "shape_plan", "source_shape", "target_sparsity"]
