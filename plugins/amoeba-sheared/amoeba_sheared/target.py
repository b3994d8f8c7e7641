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


#: the host metric unit that scores each mask family
FAMILY_UNITS = {"layer": "layer", "kv": "kv_group", "query": "query_head", "intermediate": "mlp_channel",
                "hidden": "hidden_channel"}


def metric_scores(model, anatomy, metric: str = "magnitude", calibration=None, families=STRUCTURES) -> dict:
    """:func:`shape_plan` scores of ``families`` from a host importance metric (e.g. ``magnitude``,
    the uniform baseline): a query-in-group index scores the sum of its heads over the groups, as
    the shared query mask treats it."""
    import torch

    from amoeba_plugin.errors import AmoebaError
    from amoeba_plugin.plugins import get

    source = source_shape(anatomy)
    scorer = get("metrics", metric)
    units = tuple(dict.fromkeys(FAMILY_UNITS[f] for f in families))
    missing = [u for u in units if u not in scorer.units]
    if missing:
        raise AmoebaError(f"the '{metric}' metric cannot score {', '.join(missing)} units, which this target prunes",
                          "pick a metric that scores every pruned family, e.g. taylor or magnitude")
    scores = scorer.score_units(model, anatomy, units, calibration)
    out = {}
    for f in families:
        s = scores[FAMILY_UNITS[f]]
        if f == "query":
            out[f] = torch.stack([h.float() for h in s]).view(source.layers, source.kv_heads, -1).sum(1)
        elif f in ("kv", "intermediate"):
            out[f] = torch.stack([h.float() for h in s])
        else:
            out[f] = s.float()
    return out


#: how a parameter budget becomes a shape: ``fill`` (default) lands within the fill tolerance below
#: the budget; ``nearest`` is the first rule (one width factor, snapped down; it can land ~13 % low)
SHAPE_RULES = ("fill", "nearest")
try:  # a shape is on budget when ``1 - FILL_TOLERANCE <= cost / target <= 1`` (the host's rule)
    from amoeba_plugin.budget import FILL_TOLERANCE
except ImportError:  # a host from before the rule was shared
    FILL_TOLERANCE = 0.02


def _check_counted(budget: Budget) -> None:
    if budget.kind not in ("params", "nonembed", "count"):
        raise InvalidBudgetError(f"the Sheared method cannot meet a '{budget.kind}' budget",
                                 "use shape=..., or a params, nonembed or count budget")


def _no_shape(budget: Budget):
    return InvalidBudgetError(f"no shape of this model that its config can express fits {budget}",
                              "raise the budget, or give an explicit shape=... target")


def target_shape(anatomy, config, budget: Budget, rule: str = "fill") -> Shape:
    """The shape a budget becomes: a ``shape=`` budget completed from the source; a parameter budget
    (``params``, ``nonembed``, ``count``) through ``rule`` (:func:`filled_shape` or :func:`nearest_shape`)."""
    if rule not in SHAPE_RULES:
        raise InvalidBudgetError(f"unknown shape rule '{rule}'", f"use one of: {', '.join(SHAPE_RULES)}")
    return (filled_shape if rule == "fill" else nearest_shape)(anatomy, config, budget)


def filled_shape(anatomy, config, budget: Budget, tolerance: float | None = None) -> Shape:
    """The shape a parameter budget becomes, on budget: ``1 - tolerance <= cost / target <= 1``
    (``tolerance``: the budget's own, else :data:`FILL_TOLERANCE`).

    Every KV group is kept, as in :func:`nearest_shape`. For every query-head count (per group; per
    head on MHA) and every hidden size the config expresses (a multiple of the heads and of 8), the
    MLP width is topped up to the largest multiple of 8 that fits (the source's width if that fits).
    Among the shapes on budget, the most balanced one wins: the smallest spread between the kept
    fractions of query heads, hidden size and MLP width (ties: more parameters). Layers go only when
    no shape with every layer is on budget; when no shape at any depth is, the same search runs with
    any MLP width and hidden sizes that are multiples of the heads alone, and then the largest shape
    that fits is returned (the tolerance cannot be met: e.g. a budget below what one layer costs)."""
    if budget.kind == "shape":
        return resolve_target(source_shape(anatomy), budget.value)
    _check_counted(budget)
    source = source_shape(anatomy)
    bound = budget.bind(anatomy)
    tolerance = (budget.tolerance or FILL_TOLERANCE) if tolerance is None else tolerance
    floor = (1.0 - tolerance) * bound.target
    mha = source.kv_heads == source.heads
    units = source.heads if mha else source.queries_per_group

    def cost(shape):
        return bound.measure(shape_plan(anatomy, shape))

    def topped_up(layers, kept, hidden, quantum):
        """The largest MLP width (a multiple of ``quantum``, or the source's) that fits; None when
        the config cannot express the shape, False when even the narrowest MLP is over budget."""
        kv = kept if mha else source.kv_heads
        heads = kv * (1 if mha else kept)
        base = Shape(layers, heads, kv, min(quantum, source.intermediate), hidden)
        if not family_expresses(config, base):
            return None
        low = cost(base)
        if low > bound.target:
            return False
        full = Shape(layers, heads, kv, source.intermediate, hidden)
        high = cost(full)
        if high <= bound.target:
            return full
        per_channel = (high - low) / (source.intermediate - base.intermediate)  # costs are linear in the width
        width = base.intermediate + int((bound.target - low) // per_channel)
        width = max(base.intermediate, width // quantum * quantum)
        shape = Shape(layers, heads, kv, width, hidden)
        while cost(shape) > bound.target and shape.intermediate > base.intermediate:  # rounding guard
            shape = Shape(layers, heads, kv, max(base.intermediate, shape.intermediate - quantum), hidden)
        return shape

    def spread(shape):
        kept = shape.kv_heads if mha else shape.queries_per_group
        fractions = [math.log(f) for f, n in ((kept / units, units), (shape.hidden / source.hidden, source.hidden),
                                              (shape.intermediate / source.intermediate, source.intermediate))
                     if n > 1]
        return max(fractions) - min(fractions) if fractions else 0.0

    largest = None
    for mlp_quantum, eight in ((8, True), (1, False)):
        for layers in range(source.layers, 0, -1):
            best = None
            for kept in range(units, 0, -1):
                heads = kept if mha else kept * source.kv_heads
                quantum = math.lcm(heads, 8) if eight else heads
                for hidden in range(quantum, source.hidden + 1, quantum):
                    shape = topped_up(layers, kept, hidden, mlp_quantum)
                    if shape is False:
                        break  # a larger hidden size costs more
                    if shape is None:
                        continue
                    params = cost(shape)
                    if largest is None or params > largest[0]:
                        largest = (params, shape)
                    if params >= floor:
                        key = (round(spread(shape), 9), -params)
                        if best is None or key < best[0]:
                            best = (key, shape)
            if best is not None:
                return best[1]
    if largest is None:
        raise _no_shape(budget)
    return largest[1]


def nearest_shape(anatomy, config, budget: Budget) -> Shape:
    """The first rule (``rule="nearest"``): every layer and KV group kept, one width factor ``w``
    applied to the query heads per group (per head on MHA), the MLP width and the hidden size,
    snapped down to what the family's config expresses (hidden a multiple of the heads and of 8, MLP
    width a multiple of 8); among the query-head counts, the shape whose head fraction is closest to
    ``w`` (ties: more parameters), each with the largest ``w`` that fits. Layers go only when no
    width fits (then the same search at fewer layers). It fits, but the snapping can land well
    below the budget (the embedded model at 0.5: 0.437)."""
    if budget.kind == "shape":
        return resolve_target(source_shape(anatomy), budget.value)
    _check_counted(budget)
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
    raise _no_shape(budget)


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


__all__ = ["FAMILY_UNITS", "FILL_TOLERANCE", "SHAPE_RULES", "STRUCTURES", "Shape", "family_expresses", "filled_shape", "metric_scores",
           "nearest_shape", "plan_is_shape", "resolve_target", "shape_of_config", "shape_plan", "source_shape",
           "target_shape", "target_sparsity"]
