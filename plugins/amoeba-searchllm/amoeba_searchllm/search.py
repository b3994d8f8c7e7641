"""The evolutionary search (the paper's §3.3): elitist top-k over masks and ratios under a size ceiling.

Generation 0 evaluates the initial subnet and ``population`` mutants of it (ratio probability
``p0_ratio``, mask probability ``p0_mask``, no depth change). Each later generation breeds
``mutation`` children of random parents (``p_ratio``, ``p_mask``, ``p_depth``), ``crossover`` children
of two random parents, and the rest of the population as high-randomness mutants (``p0_ratio``,
``p0_mask``, ``p_depth``); parents are the best ``top_k`` candidates evaluated so far. A child is
dropped *before* evaluation when its cost (counted from the genome) is outside
``[target·(1 - tolerance), target]``, when it repeats a candidate already evaluated (by hash), or
when crossover gives an invalid depth; breeding retries up to ``max_tries`` times per child wanted.

With a ``work_dir`` the search writes ``search_log.jsonl`` (a line per generation), ``state.json``
(everything needed to go on: the random generator's state, the fitness of every candidate seen, the
parents) after every generation, and ``search_progress.png`` (when matplotlib is installed). Started
again on the same directory with the same settings it resumes after the last finished generation and
ends exactly where an uninterrupted run would; started with more generations, it goes on from there
(as if the longer run had never stopped).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.options import Options, option
from amoeba_plugin.progress import expect, progress, report

from .genome import Candidate
from .operators import Rates, Variation
from .space import CostModel, SearchSpace

STATE_FORMAT, STATE_VERSION = "amoeba-searchllm-state", 1
STATE, LOG, PLOT = "state.json", "search_log.jsonl", "search_progress.png"

#: population settings: ``fast`` (the default of ``searchllm``: sized so that SmolLM2-135M at one budget runs
#: in about 10 minutes on a CPU thread, see docs/searchllm.md), the paper's (100 per generation: 50
#: mutation, 30 crossover, 20 high-randomness; top 10; 50 generations), and smaller ones for quick runs and tests
PRESETS = {
    "fast": {"population": 12, "mutation": 6, "crossover": 4, "top_k": 4, "generations": 6},
    "paper": {"population": 100, "mutation": 50, "crossover": 30, "top_k": 10, "generations": 50},
    "quick": {"population": 30, "mutation": 15, "crossover": 9, "top_k": 5, "generations": 12},
    "smoke": {"population": 8, "mutation": 4, "crossover": 2, "top_k": 3, "generations": 2},
}


@dataclass
class SearchConfig(Options):
    """The search's settings (the paper's in brackets); ``searchllm``'s options build it from a preset."""

    population: int = option(100, "candidates per generation [100]")
    mutation: int = option(50, "children of one parent per generation [50]")
    crossover: int = option(30, "children of two parents per generation [30]")
    top_k: int = option(10, "parents: the best candidates evaluated so far [10]")
    generations: int = option(50, "generations after the first [50]")
    p0_ratio: float = option(0.3, "ratio-mutation probability of generation 0 and the high-randomness mutants")
    p0_mask: float = option(0.6, "mask-mutation probability of generation 0 and the high-randomness mutants")
    p_ratio: float = option(0.1, "ratio-mutation probability of a mutation child")
    p_mask: float = option(0.3, "mask-mutation probability of a mutation child")
    p_depth: float = option(0.1, "probability that a child drops a layer")
    tolerance: float = option(0.02, "how far below the budget a candidate may land (fraction of the budget)")
    max_tries: int = option(50, "breeding attempts per child wanted before a generation gives up")
    seed: int = option(0, "seed of the search's random generator")

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides) -> SearchConfig:
        if preset not in PRESETS:
            raise AmoebaError(f"unknown search preset '{preset}'", f"use one of: {', '.join(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        values = {**PRESETS[preset], **given}
        base = PRESETS[preset]
        if "population" in given and isinstance(given["population"], int):  # keep the preset's shares
            for part in ("mutation", "crossover"):
                if part not in given:
                    values[part] = given["population"] * base[part] // base["population"]
        return cls(**values)

    def __post_init__(self):
        super().__post_init__()
        for name in ("population", "top_k", "max_tries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AmoebaError(f"{name} must be a positive integer, got {value!r}", f"pass {name}=10, say")
        for name in ("mutation", "crossover", "generations", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AmoebaError(f"{name} must be an integer >= 0, got {value!r}", f"pass {name}=0 or more")
        if self.mutation + self.crossover > self.population:
            raise AmoebaError(f"mutation + crossover ({self.mutation} + {self.crossover}) exceed the population "
                              f"({self.population})", "the rest of the population are high-randomness mutants: "
                              "keep mutation + crossover <= population")
        for name in ("p0_ratio", "p0_mask", "p_ratio", "p_mask", "p_depth"):
            if not 0 <= getattr(self, name) <= 1:
                raise AmoebaError(f"{name}={getattr(self, name)} is not a probability", f"pass {name} in [0, 1]")
        if not 0 <= self.tolerance < 1:
            raise AmoebaError(f"tolerance={self.tolerance} must be in [0, 1)",
                              "pass the fraction below the budget a candidate may land, e.g. 0.02")

    @property
    def random(self) -> int:
        return self.population - self.mutation - self.crossover


@dataclass
class Generation:
    """One line of the search log."""

    generation: int
    evaluated: int
    duplicates: int
    out_of_budget: int
    invalid: int
    best: float
    best_key: str
    best_cost_ratio: float
    top_k: list[float]
    seconds: float
    evaluations_per_second: float
    evaluated_total: int
    repaired: int = 0


@dataclass
class SearchResult:
    best: Candidate
    fitness: float
    initial_fitness: float
    history: list[Generation] = field(default_factory=list)
    evaluated: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None
    #: fitness of every start (the uniform one first, then the warm starts), by key
    starts: dict = field(default_factory=dict)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_STATE_FIX = "rerun with restart (--restart / restart=true deletes the checkpoint), or use another work directory"
#: what a checkpoint must hold to be resumed, and the JSON type of each
_STATE_KEYS = {"describe": dict, "generation": int, "rng": dict, "scores": dict, "parents": dict, "history": list}


def read_state(work_dir) -> dict | None:
    """The search checkpoint in ``work_dir`` (None when there is none), checked: a damaged, foreign or
    incomplete file is one clear error naming it, found before any model loads."""
    from amoeba_plugin.statefiles import read_json

    path = Path(work_dir) / STATE
    state = read_json(path, "search checkpoint", _STATE_FIX, default=None)
    if state is None:
        return None
    version = state.get("version", 0)
    if state.get("format") != STATE_FORMAT:  # someone else's file: restart will not delete it either
        raise AmoebaError(f"{path} is not a search checkpoint", "use another work directory (checkpoint_dir)")
    if not isinstance(version, int) or version > STATE_VERSION:
        raise AmoebaError(f"{path} is a search checkpoint of a version this one cannot read", _STATE_FIX)
    bad = [k for k, kind in _STATE_KEYS.items() if not isinstance(state.get(k), kind) or isinstance(state.get(k), bool)]
    if bad:
        raise AmoebaError(f"the search checkpoint {path} is damaged (missing or malformed: {', '.join(bad)})",
                          _STATE_FIX)
    return state


def differing_settings(saved: dict, current: dict) -> list[str]:
    """The keys of ``current`` (a search's ``describe``, or the part of it known before a model loads)
    whose values differ from the checkpoint's ``saved`` describe."""
    current = json.loads(json.dumps(current))
    return sorted(k for k in current if saved.get(k) != current[k])


class EvolutionSearch:
    """One search: a space, a cost model and its budget window, the operators, a fitness and settings.

    ``fitness(candidate) -> float`` scores a candidate (``higher_is_better`` says which way is better);
    ``describe`` (JSON-able) identifies everything that changes the numbers, so a checkpoint made
    with other settings is refused instead of resumed."""

    def __init__(self, space: SearchSpace, cost: CostModel, variation: Variation,
                 fitness: Callable[[Candidate], float], config: SearchConfig, *, higher_is_better: bool = False,
                 work_dir: str | os.PathLike | None = None, describe: dict | None = None,
                 on_generation: Callable[[Generation], None] | None = None,
                 repair: Callable[[Candidate], Candidate | None] | None = None):
        self.space, self.cost, self.variation, self.fitness, self.config = space, cost, variation, fitness, config
        self.sign = -1.0 if higher_is_better else 1.0
        self.work_dir = Path(work_dir) if work_dir is not None else None
        # the number of generations is left out: a longer run is the same run continued, so a checkpoint
        # may be resumed with more generations (and ends where an uninterrupted longer run would)
        settings = {k: v for k, v in asdict(config).items() if k != "generations"}
        self.describe = {"config": settings, "space": space.describe(), "budget": str(cost.budget),
                         "target": cost.target, **(describe or {})}
        self.on_generation = on_generation
        self.repair = repair
        if repair is not None:
            self.describe["repair"] = True
        self.low = cost.target * (1 - config.tolerance)

    # ------------------------------------------------------------------ helpers
    def _order(self, key: str, scores: dict[str, float]) -> tuple:
        value = scores[key]
        return (self.sign * value if math.isfinite(value) else math.inf, key)

    def score(self, candidate: Candidate) -> float:
        """The fitness of one candidate (NaN for a non-finite score, which ranks last)."""
        value = float(self.fitness(candidate))
        return value if math.isfinite(value) else math.nan

    def _breed(self, count: int, make: Callable[[], Candidate | None], seen: dict, batch: dict, stats: dict) -> None:
        tries = 0
        wanted = len(batch) + count
        while len(batch) < wanted and tries < count * self.config.max_tries:
            tries += 1
            child = make()
            if child is None:
                stats["invalid"] += 1
                continue
            cost = child.cost(self.cost)
            if not self.low <= cost <= self.cost.target:
                child = self.repair(child) if self.repair is not None else None
                if child is None:
                    stats["out_of_budget"] += 1
                    continue
                stats["repaired"] += 1
            key = child.key()
            if key in seen or key in batch:
                stats["duplicates"] += 1
                continue
            batch[key] = child

    # ------------------------------------------------------------------ the loop
    def run(self, initial: Candidate, restart: bool = False, warm: list[Candidate] = ()) -> SearchResult:
        """Search from ``initial`` (the uniform start) and the ``warm`` starts: generation 0 scores each
        start (repaired into the budget window when a repair is set) and ``population`` mutants of
        them, shared out in turn."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        init_rates = Rates(cfg.p0_ratio, cfg.p0_mask, 0.0)
        rates = Rates(cfg.p_ratio, cfg.p_mask, cfg.p_depth)
        random_rates = Rates(cfg.p0_ratio, cfg.p0_mask, cfg.p_depth)
        scores: dict[str, float] = {}       # fitness of every candidate evaluated, by key
        pool: dict[str, Candidate] = {}     # the current parents (best top_k), by key
        history: list[Generation] = []
        start_generation, resumed = 0, None
        if self.repair is not None:
            initial = self.repair(initial) or initial
            warm = [w for w in (self.repair(w) for w in warm) if w is not None]
        starts = [initial, *warm]
        init_key = initial.key()
        self.describe["initial"] = init_key
        if warm:
            self.describe["warm_starts"] = [w.key() for w in warm]
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            state = None if restart else self._load_state()
            if state is not None:
                try:
                    rng.bit_generator.state = state["rng"]
                    scores = {k: float(v) for k, v in state["scores"].items()}
                    pool = {k: Candidate.from_dict(c, self.space) for k, c in state["parents"].items()}
                    history = [Generation(**g) for g in state["history"]]
                except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                    raise AmoebaError(f"the search checkpoint {self.work_dir / STATE} is damaged "
                                      f"({type(exc).__name__}: {exc})", _STATE_FIX) from None
                if state["generation"] > cfg.generations:
                    raise AmoebaError(f"the search checkpoint in {self.work_dir} is already past generation "
                                      f"{cfg.generations} (it finished generation {state['generation']})",
                                      f"ask for at least {state['generation']} generations, or restart")
                start_generation = resumed = state["generation"] + 1
                self._write_log(history)
            elif restart and self._is_search_dir():  # delete only what a search wrote (its state is the marker)
                for name in (STATE, LOG, PLOT):
                    (self.work_dir / name).unlink(missing_ok=True)
        started = time.perf_counter()
        initial_fitness = scores.get(init_key)
        for generation in progress(range(start_generation, cfg.generations + 1), "search generations",
                                   total=cfg.generations + 1 - start_generation):
            t0 = time.perf_counter()
            stats = {"duplicates": 0, "out_of_budget": 0, "invalid": 0, "repaired": 0}
            batch: dict[str, Candidate] = {}
            if generation == 0:
                for start in starts:
                    if start.key() not in scores:
                        batch[start.key()] = start
                turn = iter(range(10 ** 9))
                self._breed(cfg.population,
                            lambda: self.variation.mutate(starts[next(turn) % len(starts)], init_rates, rng),
                            scores, batch, stats)
            else:
                parents = list(pool.values())  # best first (kept so, and checkpointed in that order)
                pick = lambda: parents[int(rng.integers(len(parents)))]  # noqa: E731
                self._breed(cfg.mutation, lambda: self.variation.mutate(pick(), rates, rng), scores, batch, stats)
                self._breed(cfg.crossover, lambda: self.variation.crossover(pick(), pick(), rng), scores, batch, stats)
                self._breed(cfg.random, lambda: self.variation.mutate(pick(), random_rates, rng), scores, batch,
                            stats)
            t_eval = time.perf_counter()
            for i, (key, child) in enumerate(batch.items()):
                scores[key] = self.score(child)
                report(f"generation {generation}: candidates", i + 1, len(batch))
                if i == 0 and generation == start_generation:  # the first evaluation sets the expectation
                    each, planned = time.perf_counter() - t_eval, cfg.population * (cfg.generations + 1 - generation)
                    expect("searchllm search", each * planned, f"{planned:,} fitness evaluations at {each:.2f} s, "
                                                               "the first one's time")
            eval_seconds = time.perf_counter() - t_eval
            pool.update(batch)  # the parents of the next generation, best first
            pool = {k: pool[k] for k in sorted(pool, key=lambda k: self._order(k, scores))[: cfg.top_k]}
            if initial_fitness is None:
                initial_fitness = scores[init_key]
            ranked = list(pool)
            best_key = ranked[0]
            line = Generation(
                generation=generation, evaluated=len(batch), **stats, best=scores[best_key], best_key=best_key,
                best_cost_ratio=round(pool[best_key].cost(self.cost) / self.cost.full, 6),
                top_k=[scores[k] for k in ranked], seconds=round(time.perf_counter() - t0, 3),
                evaluations_per_second=round(len(batch) / eval_seconds, 3) if eval_seconds > 0 else 0.0,
                evaluated_total=len(scores))
            history.append(line)
            if self.work_dir is not None:
                self._save_state(generation, rng, scores, pool, history)
            if self.on_generation is not None:
                self.on_generation(line)
        if not pool:  # nothing ran: every generation was already done before (resumed at the end)
            raise AmoebaError("the checkpoint holds no parents", "start the search again with restart=True")
        best_key = min(pool, key=lambda k: self._order(k, scores))
        return SearchResult(best=pool[best_key], fitness=scores[best_key], initial_fitness=initial_fitness,
                            history=history, evaluated=len(scores), seconds=time.perf_counter() - started,
                            resumed_from=resumed, starts={s.key(): scores.get(s.key()) for s in starts})

    # ------------------------------------------------------------------ checkpoint, log, plot
    def _is_search_dir(self) -> bool:
        """Whether ``work_dir`` holds a search's files; raises when its ``state.json`` is someone else's
        (restart must not delete it)."""
        path = self.work_dir / STATE
        if not path.exists():
            return False
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise AmoebaError(f"{path} is not a search checkpoint, so restart will not delete it",
                              "use another work directory (checkpoint_dir)")
        return True

    def _load_state(self) -> dict | None:
        state = read_state(self.work_dir)
        if state is None:
            return None
        saved = state.get("describe", {})
        if saved != json.loads(json.dumps(self.describe)):
            old, new = saved, json.loads(json.dumps(self.describe))
            differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise AmoebaError(f"the search checkpoint in {self.work_dir} was made with other settings "
                              f"(they differ in: {', '.join(differ)})",
                              "use the same settings to resume, another work directory, or restart")
        return state

    def _save_state(self, generation: int, rng, scores: dict, pool: dict, history: list[Generation]) -> None:
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, "describe": self.describe,
                 "generations": self.config.generations, "generation": generation,
                 "rng": rng.bit_generator.state, "scores": scores,
                 "parents": {k: c.to_dict() for k, c in pool.items()}, "history": [asdict(g) for g in history]}
        _atomic_write(self.work_dir / STATE, json.dumps(state, allow_nan=True))
        self._write_log(history)
        plot_progress(history, self.work_dir / PLOT, higher_is_better=self.sign < 0)

    def _write_log(self, history: list[Generation]) -> None:
        _atomic_write(self.work_dir / LOG, "".join(json.dumps(asdict(g)) + "\n" for g in history))


def plot_progress(history: list[Generation], path: Path, higher_is_better: bool = False) -> bool:
    """Best and top-k mean fitness per generation, and candidates evaluated; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    gens = [g.generation for g in history]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.plot(gens, [g.best for g in history], marker="o", label="best")
    ax.plot(gens, [float(np.nanmean(g.top_k)) for g in history], marker=".", label="top-k mean")
    finite = [g.best for g in history if math.isfinite(g.best)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:  # a start far worse than the end
        ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (higher is better)" if higher_is_better else "fitness (lower is better)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax2.bar(gens, [g.evaluated for g in history], label="evaluated")
    ax2.plot(gens, [g.out_of_budget for g in history], color="C3", marker=".", label="out of budget")
    ax2.plot(gens, [g.duplicates for g in history], color="C2", marker=".", label="duplicates")
    ax2.set_xlabel("generation")
    ax2.set_ylabel("candidates")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


__all__ = ["PRESETS", "EvolutionSearch", "Generation", "SearchConfig", "SearchResult", "plot_progress"]
