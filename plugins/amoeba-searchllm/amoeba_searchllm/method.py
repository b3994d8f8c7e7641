"""``searchllm``: Search for Efficient LLMs (Shen et al., NeurIPS 2024) in the common pruning API.

``amoeba prune MODEL --method searchllm --budget 0.5`` runs the three stages on the run's calibration
windows: salient-weight inheritance (:mod:`.init`), the evolutionary search (:mod:`.search`), then
reformation of the column-pruned linears (the host's :func:`amoeba_plugin.pruning.reformation.reformation_patch`).
The last ``fitness_windows`` calibration windows (cut to their first ``fitness_seq_len`` tokens, when
set) score candidates and nothing else; the others feed the saliency and the reformation, so the
fitness never sees the text the weights were fitted on.
"""
from __future__ import annotations

import time

from amoeba_plugin.errors import AmoebaError, DataError
from amoeba_plugin.methods import Method, PruneResult

from .init import prepare_start
from .operators import DEPTH_RULES, MASK_MODES, Variation
from .search import PRESETS, EvolutionSearch, SearchConfig, SearchResult

REFORMATIONS = ("exact", "admm", "none")
#: how a candidate is scored: masks on the shared model, or a sliced copy (faster once the subnet is
#: small and the fitness text long enough to pay for the slicing)
EVALUATIONS = ("masked", "sliced")
SEARCH_KEYS = ("population", "mutation", "crossover", "top_k", "generations", "p0_ratio", "p0_mask", "p_ratio",
               "p_mask", "p_depth", "max_tries")


def _range(value, name: str):
    if value is None:
        return None
    try:
        low, high = (float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise AmoebaError(f"{name}={value!r} is not a range", f"pass {name}=LOW,HIGH, e.g. {name}=0.6,1") from None
    return low, high


class SearchLLMMethod(Method):
    """Search for Efficient LLMs: OBS-initialised masks, evolutionary search over per-KV-group head
    channels, MLP channels and depth under a parameter ceiling, then least-squares reformation."""

    name = "searchllm"
    description = ("Search for Efficient LLMs: OBS salient-weight init, evolutionary mask search under the "
                   "budget, reformation of o_proj/down_proj")
    capabilities = frozenset({"depth", "width", "calibration", "changes_weights"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    default_options = {
        "preset": "paper", "search": True, **{k: None for k in SEARCH_KEYS}, "tolerance": 0.02, "seed": None,
        "fitness": "perplexity", "fitness_windows": 8, "fitness_seq_len": None, "fitness_options": {},
        "attention_range": None, "mlp_range": None, "min_depth": None, "keep_last": 1, "mlp_multiple": 1,
        "mask_mutation": "constructive", "alpha": 0.8, "eta": 1000, "depth_rule": "influence",
        "saliency_damping": 0.01, "evaluation": "masked",
        "reformation": "exact", "reformation_inputs": "sequential", "damping": 0.01, "rho": 1.0,
        "admm_iterations": 30, "batch_size": 8, "checkpoint_dir": None, "restart": False,
    }

    def check_options(self, options: dict) -> None:
        """Every option value that can be checked before the model loads (``preflight`` calls this)."""
        super().check_options(options)
        self.search_config({**self.default_options, **options})

    def search_config(self, options: dict) -> SearchConfig:
        """The search settings of the full ``options``, or the error naming the bad one."""
        for key, allowed in (("reformation", REFORMATIONS), ("mask_mutation", MASK_MODES), ("evaluation", EVALUATIONS),
                             ("depth_rule", DEPTH_RULES), ("reformation_inputs", ("sequential", "dense"))):
            if options[key] not in allowed:
                raise AmoebaError(f"unknown {key} '{options[key]}'", f"use one of: {', '.join(allowed)}")
        if options["preset"] not in PRESETS:
            raise AmoebaError(f"unknown search preset '{options['preset']}'", f"use one of: {', '.join(PRESETS)}")
        n = options["fitness_windows"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AmoebaError(f"fitness_windows must be a positive integer, got {n!r}", "pass fitness_windows=8")
        length = options["fitness_seq_len"]
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 2):
            raise AmoebaError(f"fitness_seq_len must be an integer >= 2 or None, got {length!r}",
                              "pass fitness_seq_len=128 (the first tokens of each fitness window) or leave it out")
        from amoeba_plugin.eval.scorers import check_spec

        check_spec(options["fitness"], "fitness")
        _range(options["attention_range"], "attention_range")
        _range(options["mlp_range"], "mlp_range")
        return SearchConfig.from_preset(options["preset"], **{k: options[k] for k in SEARCH_KEYS},
                                        tolerance=options["tolerance"], seed=options["seed"] or 0)

    def prune(self, context) -> PruneResult:
        options = self.resolve_options(context)
        if options["seed"] is None:
            options["seed"] = context.seed
        config = self.search_config(options)
        windows = self.calibration_windows(context)
        n_fit = options["fitness_windows"]
        if len(windows) <= n_fit:
            raise DataError(f"the search needs more calibration windows than its {n_fit} fitness windows "
                            f"(got {len(windows)})", f"pass more calibration samples (e.g. --samples {4 * n_fit}) "
                            "or fewer fitness_windows")
        statistics, fitness_windows = windows[:-n_fit], windows[-n_fit:, : options["fitness_seq_len"]]
        model, anatomy = context.model, context.anatomy
        timings = {}

        t = time.perf_counter()
        start = prepare_start(model, anatomy, statistics, context.budget,
                              attention_range=_range(options["attention_range"], "attention_range"),
                              mlp_range=_range(options["mlp_range"], "mlp_range"), min_depth=options["min_depth"],
                              keep_last=options["keep_last"], mlp_multiple=options["mlp_multiple"],
                              damping=options["saliency_damping"], batch_size=options["batch_size"])
        space, cost, initial = start.space, start.cost, start.candidate
        timings["initialisation_seconds"] = round(time.perf_counter() - t, 3)

        scorer = self._scorer(context, options, fitness_windows)
        variation = Variation(space, alpha=options["alpha"], mask_mode=options["mask_mutation"], eta=options["eta"],
                              depth_rule=options["depth_rule"], influence=start.saliency.influence)
        if options["evaluation"] == "sliced":
            from amoeba_plugin.surgery import slice_model

            fitness = lambda c: scorer.score_model(slice_model(model, anatomy, c.to_plan(anatomy)))  # noqa: E731
        else:
            fitness = lambda c: scorer(model, anatomy, c.to_plan(anatomy))  # noqa: E731
        search = EvolutionSearch(
            space, cost, variation, fitness, config,
            higher_is_better=scorer.higher_is_better, work_dir=options["checkpoint_dir"],
            describe={"fitness": scorer.describe(), "mask_mutation": options["mask_mutation"],
                      "alpha": options["alpha"], "depth_rule": options["depth_rule"],
                      "model": anatomy.fingerprint})
        if options["search"]:
            result = search.run(initial, restart=bool(options["restart"]))
        else:  # the salient-weight start as it is: one evaluation, for its fitness
            fitness_of_start = search.score(initial)
            result = SearchResult(best=initial, fitness=fitness_of_start, initial_fitness=fitness_of_start, evaluated=1)
        timings["search_seconds"] = round(result.seconds, 3)

        plan = result.best.to_plan(anatomy)
        patch, errors = None, {}
        if options["reformation"] != "none":
            from amoeba_plugin.pruning.reformation import reformation_patch

            t = time.perf_counter()
            patch = reformation_patch(model, anatomy, plan, statistics, solver=options["reformation"],
                                      damping=options["damping"], rho=options["rho"],
                                      iterations=options["admm_iterations"], batch_size=options["batch_size"],
                                      inputs=options["reformation_inputs"], report=errors) or None
            timings["reformation_seconds"] = round(time.perf_counter() - t, 3)
        info = self._info(context, options, start, result, scorer, errors, timings, len(statistics))
        return PruneResult(plan, patch=patch, info=info)

    # ------------------------------------------------------------------ pieces
    def _scorer(self, context, options, fitness_windows):
        """The fitness: a plugin's evaluator (``amoeba_select_evaluator``) if one answers, else the spec."""
        from amoeba_plugin.eval.scorers import EvaluatorScorer, build_scorer
        from amoeba_plugin.plugins import hook

        evaluator = hook().amoeba_select_evaluator(method=self.name, context=context)
        if evaluator is not None:
            return EvaluatorScorer(evaluator, context.tokenizer, **dict(options["fitness_options"]))
        return build_scorer(options["fitness"], context.model, context.tokenizer, context.anatomy, fitness_windows,
                            context.seed, "fitness", **{"batch_size": options["batch_size"],
                                                        **dict(options["fitness_options"])})

    @staticmethod
    def _info(context, options, start, result, scorer, errors, timings, n_statistics) -> dict:
        best, cost, initial = result.best, start.cost, start.candidate
        base = {"params": "all parameters", "count": "all parameters",
                "nonembed": "blocks only (non-embedding parameters)", "macs": "MACs per token"}[context.budget.kind]
        summary = {
            "budget": str(context.budget), "budget_base": base, "target": cost.target,
            "window": [round(cost.target * (1 - options["tolerance"])), round(cost.target)],
            "uniform_ratio": round(start.ratio, 6),
            "initial": {"pairs_per_group": start.pairs, "mlp_channels": start.channels, "cost": initial.cost(cost),
                        "fitness": result.initial_fitness},
            "best": {"cost": best.cost(cost), "cost_ratio": round(best.cost(cost) / cost.full, 6),
                     "fitness": result.fitness, **best.ratios()},
            "fitness": scorer.describe(), "fitness_windows": options["fitness_windows"],
            "statistics_windows": n_statistics, "space": start.space.describe(),
            "generations": len(result.history) and result.history[-1].generation, "evaluated": result.evaluated,
            "resumed_from_generation": result.resumed_from, **timings,
        }
        if result.seconds > 0 and result.history:
            ran = [g for g in result.history if result.resumed_from is None or g.generation >= result.resumed_from]
            evaluated = sum(g.evaluated for g in ran)
            summary["evaluations_per_second"] = round(evaluated / result.seconds, 3) if evaluated else None
        if errors:
            summary["reformation"] = {"solver": options["reformation"], "inputs": options["reformation_inputs"],
                                      "output_error": errors}
        return summary


__all__ = ["SearchLLMMethod"]
