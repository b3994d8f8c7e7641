"""Uniform width pruning driven by an importance metric: the host's built-in method and the base of
the uniform baselines (plugins subclass :class:`UniformWidthMethod` with another metric)."""
from __future__ import annotations

from dataclasses import dataclass

from .allocation import uniform_plan, uniform_width
from ..errors import AmoebaError
from ..methods import Method, MethodOptions, PruneResult, PruningContext, option


@dataclass
class UniformWidthOptions(MethodOptions):
    """Options of :class:`UniformWidthMethod` (subclasses change the ``metric`` default)."""

    metric: str = option("magnitude", "metric scoring query heads and MLP channels (see `amoeba plugins`)",
                         registry="metrics")
    keep_layers: list[int] = option([], "layers left whole, e.g. 0,-1 (the first and the last)")


class UniformWidthMethod(Method):
    """Keep the same number of query heads in every KV group and the same number of MLP channels in
    every layer, chosen per layer by an importance metric (option ``metric``). ``keep_layers``
    (e.g. ``[0, -1]``) leaves some layers whole, as LLM-Pruner does with the first and last ones;
    the other layers then shrink more and the result needs the project's own architecture.

    The result has the source family's own shape, so it exports as a stock Hugging Face model
    (:func:`amoeba_plugin.pruning.allocation.uniform_width` finds the largest such shape that fits).
    Registered as ``uniform-magnitude``: the host's one method that needs no data and no plugin,
    and the baseline every other method must beat. Plugins subclass it for other metrics (the
    baselines' ``wanda-sp`` and ``random``) by setting ``name`` and an ``options_class`` with another
    ``metric`` default.
    """

    name = "uniform-magnitude"
    description = ("uniform width pruning: same heads per KV group and MLP width in every layer, "
                   "picked by weight magnitude; exports as a stock HF model")
    capabilities = frozenset({"width"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    options_class = UniformWidthOptions

    def prune(self, context: PruningContext) -> PruneResult:
        from ..plugins import get

        anatomy, budget = context.anatomy, context.budget
        options = self.resolve_options(context)
        metric = get("metrics", options.metric)
        missing = {"query_head", "mlp_channel"} - set(metric.units)
        if missing:
            raise AmoebaError(f"metric '{metric.name}' cannot score {', '.join(sorted(missing))} units",
                              "pick a metric that scores query heads and MLP channels, e.g. magnitude")
        keep = list(options.keep_layers)
        heads, width = uniform_width(anatomy, budget, self.name, keep)
        calibration = self.calibration_windows(context) if metric.needs_calibration else None
        scores = metric.score_units(context.model, anatomy, ("query_head", "mlp_channel"), calibration,
                                    seed=context.seed)
        plan = uniform_plan(anatomy, heads, width, scores["query_head"], scores["mlp_channel"], keep)
        plan.provenance = {"metric": metric.name, "heads_per_group": heads, "intermediate_size": width}
        return PruneResult(plan=plan, info={"heads_per_group": heads, "intermediate_size": width,
                                            "metric": metric.name})


__all__ = ["UniformWidthMethod", "UniformWidthOptions"]
