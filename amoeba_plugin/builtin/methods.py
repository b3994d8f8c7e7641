"""Built-in methods: a uniform width-pruning baseline driven by an importance metric."""
from __future__ import annotations

import math

from ..errors import AmoebaError, InvalidBudgetError
from ..hookspecs import hookimpl
from ..methods import Method, PruneResult, PruningContext
from ..plan import LayerPlan, Plan, source_info


def _top(scores, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, ascending (ties: lower index wins)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


class UniformMagnitudeMethod(Method):
    """Keep the same number of query heads in every KV group and the same number of MLP channels in
    every layer, chosen per layer by an importance metric (weight magnitude by default).

    The result has the source family's own shape, so it exports as a stock Hugging Face model. The
    method searches the largest such shape that fits the budget: for every heads-per-group count
    from the source's down to 1 it binary-searches the MLP width, then keeps the candidate with the
    most parameters (ties: more heads).
    """

    name = "uniform-magnitude"
    description = ("uniform width pruning: same heads per KV group and MLP width in every layer, "
                   "picked by weight magnitude; exports as a stock HF model")
    capabilities = frozenset({"width"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    default_options = {"metric": "magnitude"}

    def prune(self, context: PruningContext) -> PruneResult:
        from ..plugins import get

        anatomy, budget = context.anatomy, context.budget
        self.check_budget(budget)
        options = {**self.default_options, **(context.options or {})}
        unknown = set(options) - set(self.default_options)
        if unknown:
            raise AmoebaError(f"unknown option(s) for '{self.name}': {', '.join(sorted(unknown))}",
                              f"use only: {', '.join(self.default_options)}")
        metric = get("metrics", options["metric"])
        missing = {"query_head", "mlp_channel"} - set(metric.units)
        if missing:
            raise AmoebaError(f"metric '{metric.name}' cannot score {', '.join(sorted(missing))} units",
                              "pick a metric that scores query heads and MLP channels, e.g. magnitude")
        calibration = None
        if metric.needs_calibration:
            if context.calibration is None:
                raise AmoebaError(f"metric '{metric.name}' needs calibration data and none was given",
                                  "pass a calibration source (e.g. --calibration sotu:train)")
            calibration = context.calibration()
        heads = metric.score(context.model, anatomy, "query_head", calibration)
        channels = metric.score(context.model, anatomy, "mlp_channel", calibration)

        attn = [l for l in anatomy.layers if l.has_attention]
        mlps = [l for l in anatomy.layers if l.has_mlp]
        max_heads = min((l.queries_per_group for l in attn), default=0)
        max_width = min((l.intermediate_size for l in mlps), default=0)

        def build(h: int, m: int) -> Plan:
            layers = []
            for l in anatomy.layers:
                lp = LayerPlan(l.index)
                if l.has_attention and h < l.queries_per_group:
                    qpg = l.queries_per_group
                    lp.query_heads = [_top(heads[l.index][g * qpg:(g + 1) * qpg], h)
                                      for g in range(l.num_kv_groups)]
                    lp.kv_groups = list(range(l.num_kv_groups))
                if l.has_mlp and m < l.intermediate_size:
                    lp.mlp_channels = _top(channels[l.index], m)
                layers.append(lp)
            return Plan(layers=layers, source=source_info(anatomy))

        def counting(h: int, m: int) -> Plan:
            """Same sizes as :func:`build`, without ranking (counts do not depend on which units)."""
            layers = []
            for l in anatomy.layers:
                lp = LayerPlan(l.index)
                if l.has_attention:
                    lp.kv_groups = list(range(l.num_kv_groups))
                    lp.query_heads = [list(range(h)) for _ in range(l.num_kv_groups)]
                if l.has_mlp:
                    lp.mlp_channels = list(range(m))
                layers.append(lp)
            return Plan(layers=layers, source=source_info(anatomy))

        def fits(h: int, m: int) -> bool:
            return budget.fits(counting(h, m), anatomy)

        best = None  # (parameters, heads, width)
        for h in (range(max_heads, 0, -1) if max_heads else [0]):
            if max_width == 0:
                m = 0 if fits(h, 0) else None
            elif not fits(h, 1):
                m = None
            else:
                lo, hi = 1, max_width  # largest m in [lo, hi] that fits; lo always fits
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if fits(h, mid):
                        lo = mid
                    else:
                        hi = mid - 1
                m = lo
            if m is None:
                continue
            params = counting(h, m).num_parameters(anatomy)
            if best is None or params > best[0]:
                best = (params, h, m)
        if best is None:
            smallest = counting(min(max_heads, 1), min(max_width, 1))
            reached = budget.measure(smallest, anatomy)
            full = budget.measure(Plan.full(anatomy), anatomy)
            unit = "MACs per token" if budget.kind == "macs" else (
                "non-embedding parameters" if budget.kind == "nonembed" else "parameters")
            raise InvalidBudgetError(
                f"budget {budget} is below what '{self.name}' can reach: keeping 1 query head per KV group "
                f"and 1 MLP channel per layer still leaves {int(reached)} {unit} "
                f"(ratio {reached / full:.4f} of the original)",
                f"pass {_suggest(budget.kind, reached, full)} or more, or use a method "
                "that drops whole layers or hidden channels (depth pruning; see `amoeba methods`)")
        _, h, m = best
        plan = build(h, m)
        plan.provenance = {"method": self.name, "budget": str(budget), "metric": metric.name,
                           "seed": context.seed, "heads_per_group": h, "intermediate_size": m}
        return PruneResult(plan=plan, info={"heads_per_group": h, "intermediate_size": m,
                                            "metric": metric.name})


def _suggest(kind: str, reached: float, full: float) -> str:
    """The smallest budget this method meets, written as a --budget value."""
    if kind == "count":
        return f"--budget count={int(reached)}"
    ratio = f"{min(1.0, math.ceil(reached / full * 1000) / 1000):g}"
    return f"--budget {ratio}" if kind == "params" else f"--budget {kind}={ratio}"


@hookimpl
def amoeba_register_methods(register):
    register(UniformMagnitudeMethod())
