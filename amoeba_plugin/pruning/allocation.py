"""From scores and a Budget to a Plan: the two allocation rules that baseline and backend methods share.

* :func:`uniform_width` keeps the same number of query heads in every KV group and the same MLP
  width in every layer (the largest such shape that fits), so the result exports as a stock model;
* :func:`global_width` removes the lowest-scored KV groups and MLP channels across all layers until
  the budget fits (FLAP's adaptive allocation across layers and modules, AL-AM), weighting each unit
  by what it costs in the budget's own unit (parameters or MACs).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..anatomy import Anatomy
from ..budget import FILL_TOLERANCE, Budget
from ..errors import InvalidBudgetError
from ..plan import LayerPlan, Plan, source_info


def top_indices(scores, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, ascending (ties: the lower index wins)."""
    values = [float(s) for s in scores]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def suggest_budget(kind: str, reached: float, full: float) -> str:
    """The smallest budget a method reached, written as a ``--budget`` value."""
    if kind == "count":
        return f"--budget count={int(reached)}"
    ratio = f"{min(1.0, math.ceil(reached / full * 1000) / 1000):g}"
    return f"--budget {ratio}" if kind == "params" else f"--budget {kind}={ratio}"


def _unit_name(kind: str) -> str:
    return {"macs": "MACs per token", "nonembed": "non-embedding parameters"}.get(kind, "parameters")


def unreachable(budget: Budget, anatomy: Anatomy, smallest: Plan, method: str, kept: str) -> InvalidBudgetError:
    """The error for a budget below the smallest plan a method can make (``kept`` says what it keeps)."""
    reached, full = budget.measure(smallest, anatomy), budget.measure(Plan.full(anatomy), anatomy)
    return InvalidBudgetError(
        f"budget {budget} is below what '{method}' can reach: {kept} still leaves {int(reached)} "
        f"{_unit_name(budget.kind)} (ratio {reached / full:.4f} of the original)",
        f"pass {suggest_budget(budget.kind, reached, full)} or more, or use a method that drops whole "
        "layers or hidden channels (depth pruning; see `amoeba methods`)")


# ---------------------------------------------------------------------- uniform shapes
def protected_layers(anatomy: Anatomy, keep_layers: Sequence[int]) -> frozenset[int]:
    """``keep_layers`` (negative indices count from the end) as a set of layer indices."""
    n = anatomy.num_layers
    bad = [i for i in keep_layers if not isinstance(i, int) or not -n <= i < n]
    if bad:
        raise InvalidBudgetError(f"keep_layers {bad} are not layer indices of this {n}-layer model",
                                 f"use integers from {-n} to {n - 1} (negative counts from the end)")
    return frozenset(i % n for i in keep_layers)


def uniform_plan(anatomy: Anatomy, heads_per_group: int, width: int,
                 head_scores: Sequence[torch.Tensor] | None = None,
                 channel_scores: Sequence[torch.Tensor] | None = None, keep_layers: Sequence[int] = (),
                 depth: Sequence[int] | None = None) -> Plan:
    """Every layer keeps ``heads_per_group`` query heads per KV group and ``width`` MLP channels,
    the best-scored ones (per group, per layer); without scores, the first ones (for counting).
    Layers in ``keep_layers`` stay whole (LLM-Pruner leaves the first and last layers alone);
    ``depth`` (layer indices), when given, keeps only those layers."""
    protected = protected_layers(anatomy, keep_layers)
    kept = None if depth is None else set(depth)
    layers = []
    for l in anatomy.layers:
        if kept is not None and l.index not in kept:
            continue
        lp = LayerPlan(l.index)
        if l.index in protected:
            layers.append(lp)
            continue
        if l.has_attention and heads_per_group < l.queries_per_group:
            qpg = l.queries_per_group
            lp.kv_groups = list(range(l.num_kv_groups))
            lp.query_heads = [top_indices(head_scores[l.index][g * qpg:(g + 1) * qpg], heads_per_group)
                              if head_scores is not None else list(range(heads_per_group))
                              for g in range(l.num_kv_groups)]
        if l.has_mlp and width < l.intermediate_size:
            lp.mlp_channels = (top_indices(channel_scores[l.index], width) if channel_scores is not None
                               else list(range(width)))
        layers.append(lp)
    return Plan(layers=layers, source=source_info(anatomy))


def uniform_width(anatomy: Anatomy, budget: Budget, method: str = "uniform width",
                  keep_layers: Sequence[int] = (), depth: Sequence[int] | None = None) -> tuple[int, int]:
    """``(heads_per_group, mlp_width)`` of the uniform plan that fits ``budget`` and prunes
    attention and MLP at the most similar ratio (as LLM-Pruner and Wanda-sp prune both at one ratio).

    For every heads-per-group count from the source's down to 1 it binary-searches the largest MLP
    width that fits; among those candidates it prefers one that a stock config can express
    (transformers requires ``hidden_size % num_attention_heads == 0``), then the one whose kept
    fraction of heads is closest to its kept fraction of MLP channels (ties: more parameters, then
    more heads). Keeping the most
    parameters instead would halve the heads to keep a wide MLP, and heads are where a small model
    is most sensitive (see docs/baselines.md). ``depth`` (layer indices) keeps only those layers.
    """
    attn = [l for l in anatomy.layers if l.has_attention]
    mlps = [l for l in anatomy.layers if l.has_mlp]
    max_heads = min((l.queries_per_group for l in attn), default=0)
    max_width = min((l.intermediate_size for l in mlps), default=0)

    bound = budget.bind(anatomy)

    def fits(h: int, m: int) -> bool:
        return bound.fits(uniform_plan(anatomy, h, m, keep_layers=keep_layers, depth=depth))

    best = None  # (ranking key, heads, width)
    for h in (range(max_heads, 0, -1) if max_heads else [0]):
        if max_width == 0:
            m = 0 if fits(h, 0) else None
        elif not fits(h, 1):
            m = None
        else:
            lo, hi = 1, max_width  # the largest m in [lo, hi] that fits; lo always fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(h, mid):
                    lo = mid
                else:
                    hi = mid - 1
            m = lo
        if m is None:
            continue
        params = uniform_plan(anatomy, h, m, keep_layers=keep_layers, depth=depth).num_parameters(anatomy)
        gap = abs(h / max_heads - m / max_width) if max_heads and max_width else 0.0
        stock = all(anatomy.hidden_size % (h * l.num_kv_groups) == 0 for l in attn) if h else True
        key = (stock, -round(gap, 9), params, h)
        if best is None or key > best[0]:
            best = (key, h, m)
    if best is None:
        smallest = uniform_plan(anatomy, min(max_heads, 1), min(max_width, 1), keep_layers=keep_layers, depth=depth)
        raise unreachable(budget, anatomy, smallest, method,
                          "keeping 1 query head per KV group and 1 MLP channel per layer")
    return best[1], best[2]


# ---------------------------------------------------------------------- global allocation
def standardize(scores: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` (FLAP standardises each layer's scores of one module type)."""
    x = scores.double()
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / (std if float(std) > 0 else 1.0)


def standardized_unit_scores(anatomy: Anatomy, role_scores: Sequence[dict]) -> tuple[list, list]:
    """FLAP's comparable scores from a linear metric's per-layer ``role_scores``: o_proj columns and
    down_proj columns standardised within each layer, a KV group scored by the mean over its columns.
    Returns ``(group_scores, channel_scores)`` per layer, ready for :func:`global_width`."""
    groups, channels = [], []
    for layer, scores in zip(anatomy.layers, role_scores):
        if layer.has_attention:
            groups.append(standardize(scores["o"]).reshape(layer.num_kv_groups, -1).mean(1))
        else:
            groups.append(torch.zeros(0))
        channels.append(standardize(scores["down"]) if layer.has_mlp else torch.zeros(0))
    return groups, channels


def global_width(anatomy: Anatomy, budget: Budget, group_scores: Sequence[torch.Tensor],
                 channel_scores: Sequence[torch.Tensor], method: str = "global width",
                 output_bias: bool = False, *, depth: Sequence[int] | None = None,
                 top_up: bool = False) -> Plan:
    """Remove the lowest-scored KV groups and MLP channels of all layers, in one ranking, until
    ``budget`` fits. Scores must be comparable across layers and module types (standardise them
    first, as FLAP does). Each unit is weighted by its cost in the budget's unit (the bound budget's
    unit costs); a layer's only KV group (only MLP channel) also carries its attention's (MLP's) fixed
    cost, which goes with it. A layer may lose its whole attention or MLP. ``output_bias`` is set on
    the plan when the method compensates removed channels with an output bias (it changes the count).

    ``depth`` (layer indices) keeps only those decoder layers and prunes width inside them: a depth plan
    topped up with width (ShortGPT and AmoebaLLM fill their budget this way). ``top_up`` then puts
    back the best-scored removed units that still fit, so the plan lands within one unit (usually
    one MLP channel) of the target instead of up to one KV group below it; without it the removed
    units are a prefix of one ranking, so plans for smaller budgets are nested in larger ones."""
    bound = budget.bind(anatomy)
    kept = None if depth is None else set(depth)
    full = Plan.full(anatomy)
    if kept is not None:
        full.layers = [lp for lp in full.layers if lp.index in kept]
    full.output_bias = output_bias
    need = bound.measure(full) - bound.target
    if need <= 0:
        return full
    bias = bound.costs.output_bias if output_bias else (0, 0)
    units = []  # (score, cost, layer, kind, index)
    for l, costs in zip(anatomy.layers, bound.costs.layers):
        if kept is not None and l.index not in kept:
            continue
        if l.has_attention:
            fixed = costs.attention + bias[0] if l.num_kv_groups == 1 else 0
            units += [(float(s), costs.kv_group[g] + fixed, l.index, "group", g)
                      for g, s in enumerate(group_scores[l.index])]
        if l.has_mlp:
            fixed = costs.mlp + bias[1] if l.intermediate_size == 1 else 0
            units += [(float(s), costs.mlp_channel + fixed, l.index, "channel", c)
                      for c, s in enumerate(channel_scores[l.index])]
    units.sort(key=lambda u: (u[0], u[2], u[3], u[4]))
    removed, count = 0.0, 0
    while count < len(units) and removed < need:
        removed += units[count][1]
        count += 1

    def build(chosen) -> Plan:
        gone: dict[tuple[int, str], set[int]] = {}
        for i in chosen:
            _, _, layer, kind, index = units[i]
            gone.setdefault((layer, kind), set()).add(index)
        plan = Plan([lp for lp in Plan.full(anatomy).layers if kept is None or lp.index in kept],
                    source_info(anatomy))
        plan.output_bias = output_bias
        for lp in plan.layers:
            la = anatomy.layer(lp.index)
            if (lp.index, "group") in gone:
                lp.kv_groups = [g for g in range(la.num_kv_groups) if g not in gone[(lp.index, "group")]]
                lp.query_heads = [list(range(la.queries_per_group)) for _ in lp.kv_groups]
            if (lp.index, "channel") in gone:
                lp.mlp_channels = [c for c in range(la.intermediate_size) if c not in gone[(lp.index, "channel")]]
        return plan

    plan = build(range(count))
    while not bound.fits(plan) and count < len(units):  # rounding at emptied layers
        count += 1
        plan = build(range(count))
    if not bound.fits(plan):
        raise unreachable(budget, anatomy, plan, method, "removing every attention head and MLP channel")
    if top_up:
        plan = _top_up(bound, plan, units, build, need)
    return plan


def _top_up(bound, plan: Plan, units: list, build, need: float) -> Plan:
    """A plan closer to the target than ``plan`` (the ranking's prefix), or ``plan``: remove units in
    ranking order but pass over one that would overshoot the need by more than half the fill
    tolerance (a KV group where MLP channels suffice), then put back removed units, the best-scored
    first, while the plan still fits. A unit whose layer lost that whole module stays out, as the
    module's fixed cost would come back with it."""
    limit = need + FILL_TOLERANCE * bound.target / 2
    chosen, removed = [], 0.0
    for i, unit in enumerate(units):
        if removed >= need:
            break
        if removed + unit[1] <= limit:
            chosen.append(i)
            removed += unit[1]
    best = plan
    candidate = build(chosen)
    if bound.fits(candidate) and bound.measure(candidate) > bound.measure(best):
        best = candidate
    else:
        gone = _removed_units(plan, bound.anatomy)
        chosen = [i for i, unit in enumerate(units) if unit[2:] in gone]
    slack = bound.target - bound.measure(best)
    emptied = {(lp.index, "group") for lp in best.layers if lp.kv_groups == []}
    emptied |= {(lp.index, "channel") for lp in best.layers if lp.mlp_channels == []}
    restored = set()
    for i in reversed(chosen):
        _, cost, layer, kind, _ = units[i]
        if cost <= slack and (layer, kind) not in emptied:
            restored.add(i)
            slack -= cost
    if restored:
        topped = build([i for i in chosen if i not in restored])
        if bound.fits(topped) and bound.measure(topped) > bound.measure(best):
            best = topped
    return best


def _removed_units(plan: Plan, anatomy: Anatomy) -> set[tuple[int, str, int]]:
    """``(layer, "group" | "channel", index)`` of every unit ``plan`` (built by :func:`global_width`) removed."""
    gone = set()
    for lp in plan.layers:
        la = anatomy.layer(lp.index)
        for kind, kept, size in (("group", lp.kv_groups, la.num_kv_groups),
                                 ("channel", lp.mlp_channels, la.intermediate_size)):
            if kept is not None:
                kept = set(kept)
                gone |= {(lp.index, kind, i) for i in range(size) if i not in kept}
    return gone


def fill_ratio(budget: Budget, anatomy: Anatomy, plan: Plan) -> float:
    """``plan``'s cost over ``budget``'s target (1.0: exactly at the budget; a plan is on budget in
    ``[1 - FILL_TOLERANCE, 1]``); :meth:`BoundBudget.fill <amoeba_plugin.budget.BoundBudget.fill>`."""
    return budget.bind(anatomy).fill(plan)


__all__ = ["FILL_TOLERANCE", "fill_ratio", "global_width", "protected_layers", "standardize", "standardized_unit_scores", "suggest_budget", "top_indices", "uniform_plan", "uniform_width",
           "unreachable"]
