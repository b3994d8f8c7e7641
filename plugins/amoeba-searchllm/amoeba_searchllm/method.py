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
from dataclasses import asdict, dataclass

from amoeba_plugin.errors import AmoebaError, DataError
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.options import MethodOptions, option, option_like

from .init import dense_statistics, prepare_start
from .operators import DEPTH_RULES, MASK_MODES, Variation
from .proxy import FITNESS_REFORMS, ReformProxy
from .repair import repair as repair_candidate
from .search import PRESETS, EvolutionSearch, SearchConfig, SearchResult, differing_settings, read_state
from .warm import WARM_STARTS, candidate_from_plan, flap_plan, load_plan

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


@dataclass
class SearchLLMOptions(MethodOptions):
    """The options of ``searchllm``; the search's own settings come from :class:`SearchConfig` (its
    defaults), the population ones from the preset unless given."""

    preset: str = option("fast", "population settings: fast (sized for a 10-minute SmolLM2-135M run on a CPU), "
                                 "paper (100 per generation, top 10, 50 generations), quick or smoke",
                         choices=tuple(PRESETS))
    warm_start: str = option("flap", "also start from: flap (FLAP's adaptive allocation, host helpers), a plan "
                                     "file's path, or none (the paper: the uniform OBS start only)")
    repair: bool = option(True, "rescale a child outside the budget window into it (false: drop it, the paper)")
    fitness_reform: str = option("refit", "score candidates as reformed: refit (per-layer least squares with an "
                                          "intercept on dense inputs), bias (bias compensation) or none (the "
                                          "paper)", choices=FITNESS_REFORMS)
    reformation_bias: bool = option(True, "the final reformation also fits an output bias (an intercept)")
    search: bool = option(True, "run the search (false: keep the salient-weight start, evaluated once)")
    population: int | None = option(None, "candidates per generation (default: the preset's; mutation and "
                                          "crossover keep the preset's shares)")
    mutation: int | None = option(None, "children of one parent per generation (default: the preset's)")
    crossover: int | None = option(None, "children of two parents per generation (default: the preset's)")
    top_k: int | None = option(None, "parents kept (default: the preset's)")
    generations: int | None = option(None, "generations after the first (default: the preset's)")
    p0_ratio: float = option_like(SearchConfig, "p0_ratio")
    p0_mask: float = option_like(SearchConfig, "p0_mask")
    p_ratio: float = option_like(SearchConfig, "p_ratio")
    p_mask: float = option_like(SearchConfig, "p_mask")
    p_depth: float = option_like(SearchConfig, "p_depth")
    max_tries: int = option_like(SearchConfig, "max_tries")
    tolerance: float = option_like(SearchConfig, "tolerance")
    seed: int | None = option(None, "seed of the search (default: the run's seed)")
    fitness: str = option("perplexity", "what scores a candidate: perplexity, loss or lm-eval:TASK")
    fitness_windows: int = option(4, "calibration windows kept aside to score candidates (and nothing else)", ge=1)
    fitness_seq_len: int | None = option(128, "score on the first tokens of each fitness window only "
                                              "(none: the whole window)", ge=2)
    fitness_options: dict = option({}, "options of the fitness scorer or evaluator, e.g. {\"num_questions\": 64}")
    attention_range: tuple[float, float] | None = option(
        None, "LOW,HIGH: the range of head-channel ratios the search may use (default: the space's)",
        parse=lambda text: _range(text, "attention_range"))
    mlp_range: tuple[float, float] | None = option(
        None, "LOW,HIGH: the range of MLP-channel ratios the search may use (default: the space's)",
        parse=lambda text: _range(text, "mlp_range"))
    min_depth: int | None = option(None, "fewest layers a candidate may keep (default: the space's)", ge=1)
    keep_last: int = option(1, "last layers a depth mutation never removes", ge=0)
    mlp_multiple: int = option(1, "MLP widths are multiples of this", ge=1)
    mask_mutation: str = option("constructive", "constructive (always mutates) or paper_literal (the paper's "
                                                "rejection test)", choices=MASK_MODES)
    alpha: float = option(0.8, "kept overlap of a mutated mask with the old one", ge=0, le=1)
    eta: int = option(1000, "paper_literal: draws before a mask mutation gives up", ge=1)
    depth_rule: str = option("influence", "which layer a depth mutation removes", choices=DEPTH_RULES)
    saliency_damping: float = option(0.01, "damping of the OBS saliency's Hessian", ge=0)
    evaluation: str = option("masked", "score candidates by masks on the shared model, or on a sliced copy",
                             choices=EVALUATIONS)
    reformation: str = option("exact", "refit o_proj/down_proj after the search: exact least squares, admm or "
                                       "none", choices=REFORMATIONS)
    reformation_inputs: str = option("sequential", "inputs of the refit: the pruned model's (sequential) or the "
                                                   "dense model's", choices=("sequential", "dense"))
    damping: float = option(0.01, "damping of the reformation's least squares", ge=0)
    rho: float = option(1.0, "ADMM penalty", gt=0)
    admm_iterations: int = option(30, "ADMM iterations", ge=1)
    batch_size: int = option(8, "calibration windows per forward pass", ge=1)
    checkpoint_dir: str | None = option(None, "search directory (log, checkpoint, plot); a rerun resumes there")
    restart: bool = option(False, "delete the checkpoint in checkpoint_dir and start again")

    def __post_init__(self):
        """Every option value that can be checked before the model loads (``preflight`` builds this)."""
        if self.preset not in PRESETS:
            raise AmoebaError(f"unknown search preset '{self.preset}'", f"use one of: {', '.join(PRESETS)}")
        super().__post_init__()
        from amoeba_plugin.eval.scorers import check_spec_task

        # an unknown lm-eval task fails here, before the model loads and calibrates
        check_spec_task(self.fitness, "fitness", (self.fitness_options or {}).get("include_path"))
        if self.warm_start not in WARM_STARTS and not self.warm_start.endswith(".json"):
            from pathlib import Path

            if not Path(self.warm_start).is_file():
                raise AmoebaError(f"warm_start={self.warm_start!r} is neither {' nor '.join(WARM_STARTS)} nor a "
                                  "plan file", "pass warm_start=flap, warm_start=none or the path of a plan.json")
        self.search_config()

    def search_config(self, seed: int = 0) -> SearchConfig:
        """The search settings: the preset, the options given, the search's defaults; ``seed`` (the
        run's) unless the options set one."""
        return SearchConfig.from_preset(self.preset, **{k: getattr(self, k) for k in SEARCH_KEYS},
                                        tolerance=self.tolerance, seed=self.seed if self.seed is not None else seed)


class SearchLLMMethod(Method):
    """Search for Efficient LLMs: OBS-initialised masks, evolutionary search over per-KV-group head
    channels, MLP channels and depth under a parameter ceiling, then least-squares reformation."""

    name = "searchllm"
    description = ("Search for Efficient LLMs: OBS salient-weight init, evolutionary mask search under the "
                   "budget, reformation of o_proj/down_proj")
    capabilities = frozenset({"depth", "width", "calibration", "changes_weights"})
    budget_kinds = ("params", "nonembed", "count", "macs")
    options_class = SearchLLMOptions

    def check_run(self, budget, options, seed: int = 0) -> None:
        """A checkpoint in ``checkpoint_dir`` that this run would resume: readable, and made with these
        settings (the search's, the budget, the operators, the fitness), checked before the model loads."""
        if not options.checkpoint_dir:
            return
        from amoeba_plugin.statefiles import check_writable

        check_writable(options.checkpoint_dir, "search work directory")  # not after the model has loaded
        if options.restart or not options.search:
            return
        state = read_state(options.checkpoint_dir)
        if state is None:
            return
        config = options.search_config(seed=seed)
        known = {"config": {k: v for k, v in asdict(config).items() if k != "generations"}, "budget": str(budget),
                 "mask_mutation": options.mask_mutation, "alpha": options.alpha, "depth_rule": options.depth_rule}
        differ = differing_settings(state["describe"], known)
        saved_fitness = state["describe"].get("fitness") or {}
        kind, _, task = options.fitness.partition(":")
        if saved_fitness.get("name") in ("loss", "perplexity", "lm-eval") and (
                saved_fitness.get("name") != kind or saved_fitness.get("task", "") != task):
            differ.append("fitness")
        if differ:
            raise AmoebaError(f"the search checkpoint in {options.checkpoint_dir} was made with other settings "
                              f"(they differ in: {', '.join(sorted(differ))})",
                              "use the same settings to resume, another checkpoint_dir, or restart=true")
        if state["generation"] > config.generations:
            raise AmoebaError(f"the search checkpoint in {options.checkpoint_dir} is already past generation "
                              f"{config.generations} (it finished generation {state['generation']})",
                              f"ask for at least {state['generation']} generations, or restart=true")

    def prune(self, context) -> PruneResult:
        options = self.resolve_options(context)
        config = options.search_config(seed=context.seed)
        windows = self.calibration_windows(context)
        n_fit = options.fitness_windows
        if len(windows) <= n_fit:
            raise DataError(f"the search needs more calibration windows than its {n_fit} fitness windows "
                            f"(got {len(windows)})", f"pass more calibration samples (e.g. --calibration-samples "
                            f"{4 * n_fit}) or fewer fitness_windows")
        statistics, fitness_windows = windows[:-n_fit], windows[-n_fit:, : options.fitness_seq_len]
        model, anatomy = context.model, context.anatomy
        timings = {}
        from amoeba_plugin.progress import note

        note(f"searchllm: OBS initialisation on {len(statistics)} windows, then " + (
            f"{config.population * (config.generations + 1):,} fitness evaluations ({config.generations + 1} "
            f"generations of {config.population}, preset '{options.preset}')" if options.search else "no search"))

        t = time.perf_counter()
        bias = options.reformation_bias and options.reformation != "none"
        stats = dense_statistics(model, anatomy, statistics, batch_size=options.batch_size)
        start = prepare_start(model, anatomy, stats, context.budget,
                              attention_range=options.attention_range, mlp_range=options.mlp_range,
                              min_depth=options.min_depth, output_bias=bias,
                              keep_last=options.keep_last, mlp_multiple=options.mlp_multiple,
                              damping=options.saliency_damping, batch_size=options.batch_size)
        space, cost, initial = start.space, start.cost, start.candidate
        warm = []
        if options.warm_start == "flap":
            warm.append(candidate_from_plan(flap_plan(model, anatomy, context.budget, stats, output_bias=bias),
                                            anatomy, space))
        elif options.warm_start != "none":
            warm.append(candidate_from_plan(load_plan(options.warm_start, anatomy), anatomy, space))
        proxy = ReformProxy(model, anatomy, stats, options.fitness_reform, options.damping)
        for layer in stats.layers.values():  # what the proxy does not read
            for site, acc in layer.inputs.items():
                if site not in ("o", "down") or options.fitness_reform != "refit":
                    acc.gram = None
        del stats
        timings["initialisation_seconds"] = round(time.perf_counter() - t, 3)

        scorer = self._scorer(context, options, fitness_windows)
        variation = Variation(space, alpha=options.alpha, mask_mode=options.mask_mutation, eta=options.eta,
                              depth_rule=options.depth_rule, influence=start.saliency.influence)
        if options.evaluation == "sliced":
            from amoeba_plugin.surgery import slice_model

            def fitness(c):
                plan = c.to_plan(anatomy)
                return scorer.score_model(slice_model(model, anatomy, plan, patch=proxy.patch(plan) or None))
        else:
            from amoeba_plugin.surgery import apply_soft

            def fitness(c):
                plan = c.to_plan(anatomy)
                with apply_soft(model, anatomy, plan, proxy.patch(plan)):
                    return scorer.score_model(model)
        low = cost.target * (1 - config.tolerance)
        repair = (lambda c: repair_candidate(c, space, cost, low, cost.target, start.saliency.attention,  # noqa: E731
                                             start.saliency.mlp)) if options.repair else None
        search = EvolutionSearch(
            space, cost, variation, fitness, config,
            higher_is_better=scorer.higher_is_better, work_dir=options.checkpoint_dir,
            describe={"fitness": scorer.describe(), "mask_mutation": options.mask_mutation,
                      "alpha": options.alpha, "depth_rule": options.depth_rule,
                      "model": anatomy.fingerprint, "fitness_reform": options.fitness_reform,
                      "output_bias": bias}, repair=repair)
        if options.search:
            result = search.run(initial, restart=bool(options.restart), warm=warm)
        else:  # the best start as it is: one evaluation each, for its fitness
            starts = [c for c in ([initial, *warm] if repair is None else
                                  [repair(initial) or initial, *filter(None, map(repair, warm))])]
            scored = {c.key(): search.score(c) for c in starts}
            best = min(starts, key=lambda c: search._order(c.key(), scored))
            result = SearchResult(best=best, fitness=scored[best.key()], initial_fitness=scored[starts[0].key()],
                                  evaluated=len(starts), starts=scored)
        timings["search_seconds"] = round(result.seconds, 3)

        plan = result.best.to_plan(anatomy, output_bias=bias)
        patch, errors = None, {}
        if options.reformation != "none":
            from amoeba_plugin.pruning.reformation import reformation_patch

            t = time.perf_counter()
            patch = reformation_patch(model, anatomy, plan, statistics, solver=options.reformation,
                                      damping=options.damping, rho=options.rho,
                                      iterations=options.admm_iterations, batch_size=options.batch_size,
                                      inputs=options.reformation_inputs, report=errors, bias=bias) or None
            timings["reformation_seconds"] = round(time.perf_counter() - t, 3)
        info = self._info(context, options, start, result, scorer, errors, timings, len(statistics), proxy)
        return PruneResult(plan, patch=patch, info=info)

    # ------------------------------------------------------------------ pieces
    def _scorer(self, context, options, fitness_windows):
        """The fitness: a plugin's evaluator (``amoeba_select_evaluator``) if one answers, else the spec."""
        from amoeba_plugin.eval.scorers import EvaluatorScorer, build_scorer
        from amoeba_plugin.plugins import hook

        evaluator = hook().amoeba_select_evaluator(method=self.name, context=context)
        if evaluator is not None:
            return EvaluatorScorer(evaluator, context.tokenizer, **dict(options.fitness_options))
        return build_scorer(options.fitness, context.model, context.tokenizer, context.anatomy, fitness_windows,
                            context.seed, "fitness", **{"batch_size": options.batch_size,
                                                        **dict(options.fitness_options)})

    @staticmethod
    def _info(context, options, start, result, scorer, errors, timings, n_statistics, proxy) -> dict:
        best, cost, initial = result.best, start.cost, start.candidate
        base = {"params": "all parameters", "count": "all parameters",
                "nonembed": "blocks only (non-embedding parameters)", "macs": "MACs per token"}[context.budget.kind]
        summary = {
            "budget": str(context.budget), "budget_base": base, "target": cost.target,
            "window": [round(cost.target * (1 - options.tolerance)), round(cost.target)],
            "uniform_ratio": round(start.ratio, 6),
            "initial": {"pairs_per_group": start.pairs, "mlp_channels": start.channels, "cost": initial.cost(cost),
                        "fitness": result.initial_fitness},
            "best": {"cost": best.cost(cost), "cost_ratio": round(best.cost(cost) / cost.full, 6),
                     "fitness": result.fitness, **best.ratios()},
            "fitness": scorer.describe(), "fitness_windows": options.fitness_windows,
            "statistics_windows": n_statistics, "space": start.space.describe(),
            "generations": len(result.history) and result.history[-1].generation, "evaluated": result.evaluated,
            "resumed_from_generation": result.resumed_from, **timings,
            "warm_start": options.warm_start, "starts": result.starts, "repair": options.repair,
            "fitness_reform": options.fitness_reform, "output_bias": start.cost.output_bias,
            "proxy_cache": {"hits": proxy.hits, "misses": proxy.misses},
        }
        if result.seconds > 0 and result.history:
            ran = [g for g in result.history if result.resumed_from is None or g.generation >= result.resumed_from]
            evaluated = sum(g.evaluated for g in ran)
            summary["evaluations_per_second"] = round(evaluated / result.seconds, 3) if evaluated else None
        if errors:
            summary["reformation"] = {"solver": options.reformation, "inputs": options.reformation_inputs,
                                      "output_error": errors}
        return summary


__all__ = ["SearchLLMMethod"]
