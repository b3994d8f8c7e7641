"""Search for Efficient LLMs backend: exact genome costs, the operators' guarantees, the OBS start,
masked == sliced for searched subnets, a resumable deterministic search, and the method end to end."""
import json
import math

import numpy as np
import pytest
import torch

import amoeba_plugin  # noqa: F401
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError, InvalidBudgetError
from amoeba_plugin.eval.scorers import LossScorer
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.plugins import get
from amoeba_plugin.surgery import slice_model
from amoeba_plugin.testing import assert_soft_equals_sliced, make_tiny, save_tiny
from amoeba_searchllm.genome import Candidate
from amoeba_searchllm.init import initial_candidate, uniform_ratio, unit_saliency
from amoeba_searchllm.operators import Rates, Variation, mutate_mask
from amoeba_searchllm.search import LOG, PLOT, STATE, EvolutionSearch, SearchConfig
from amoeba_searchllm.space import CostModel, SearchSpace, preset_ranges

# tiny models: 4 layers, hidden 64, 8 query heads in 2 KV groups, head_dim 8 (4 RoPE pairs), MLP 96


def _space(anatomy, min_depth=3, keep_last=1):
    return SearchSpace.build(anatomy, (0.25, 1.0), (0.1, 1.0), min_depth, keep_last=keep_last)


def _random_candidates(space, n, seed=0):
    rng = np.random.default_rng(seed)
    variation = Variation(space, depth_rule="random")
    c = Candidate.full(space)
    out = []
    for _ in range(n):
        c = variation.mutate(c, Rates(0.6, 0.6, 0.5), rng)
        out.append(c)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("kind", ["params", "nonembed", "macs"])
def test_genome_cost_is_exactly_the_plans(family, kind):
    model = make_tiny(family)
    anatomy = anatomy_of(model)
    budget = Budget(kind, 0.6)
    cost = CostModel(anatomy, budget)
    space = _space(anatomy)
    assert cost.full == budget.measure(Candidate.full(space).to_plan(anatomy), anatomy)
    for c in _random_candidates(space, 25):
        plan = c.to_plan(anatomy)
        plan.validate(anatomy)
        assert c.cost(cost) == pytest.approx(budget.measure(plan, anatomy), abs=1e-6)
        if kind == "params":
            assert c.cost(cost) == sum(p.numel() for p in slice_model(model, anatomy, plan).parameters())


def test_constructive_mask_mutation_keeps_the_ratio_and_the_overlap():
    rng = np.random.default_rng(0)
    mask = np.zeros(200, dtype=bool)
    mask[rng.choice(200, 60, replace=False)] = True
    for keep in (20, 60, 150):
        for _ in range(20):
            new = mutate_mask(mask, keep, 1.0, rng, alpha=0.8)
            assert new.sum() == keep
            assert (new & mask).sum() >= math.ceil(0.8 * min(60, keep))
    assert mutate_mask(mask, 60, 0.0, rng) is mask  # same ratio and no mask mutation drawn: unchanged
    assert not np.array_equal(mutate_mask(mask, 60, 1.0, rng), mask)


def test_the_literal_algorithm_1_rarely_mutates_below_a_high_ratio():
    """The paper's sampler accepts a random subset only if it overlaps the old mask in alpha * N
    places: at a ratio of 0.6 that never happens and the old mask comes back (the research notes'
    hypergeometric table); at 0.95 it often passes."""
    rng = np.random.default_rng(1)
    low = np.zeros(128, dtype=bool)
    low[:77] = True
    assert all(mutate_mask(low, 77, 1.0, rng, mode="paper_literal", eta=200) is low for _ in range(5))
    high = np.zeros(128, dtype=bool)
    high[:122] = True
    changed = sum(mutate_mask(high, 122, 1.0, rng, mode="paper_literal", eta=200) is not high for _ in range(10))
    assert changed >= 5


def test_depth_mutation_rules_and_crossover(tiny):
    _, anatomy = tiny
    space = _space(anatomy, min_depth=2, keep_last=1)
    rng = np.random.default_rng(0)
    full = Candidate.full(space)
    last = Variation(space, depth_rule="last")
    child = last.mutate(full, Rates(0, 0, 1.0), rng)
    assert child.layers == [0, 1, 3]  # the last removable layer (layer 3 is kept: keep_last=1)
    influence = np.array([5.0, 0.1, 5.0, 5.0])
    picks = [Variation(space, depth_rule="influence", influence=influence).mutate(full, Rates(0, 0, 1.0), rng).layers
             for _ in range(40)]
    assert sum(1 not in p for p in picks) > 15  # the least influential layer is dropped most often
    a, b = _random_candidates(space, 2, seed=3)
    for _ in range(10):
        c = last.crossover(a, b, rng)
        if c is None:
            continue
        for layer in range(4):
            parent = a if np.array_equal(c.mlp[layer], a.mlp[layer]) and c.kept[layer] == a.kept[layer] else b
            assert all(np.array_equal(x, y) for x, y in zip(c.attention[layer], parent.attention[layer]))
        assert c.depth >= 2 and c.kept[3]


def test_candidate_round_trips_and_hashes_what_it_computes(tiny):
    _, anatomy = tiny
    space = _space(anatomy)
    for c in _random_candidates(space, 5):
        again = Candidate.from_dict(json.loads(json.dumps(c.to_dict())), space)
        assert again.key() == c.key() and again.to_plan(anatomy).to_dict() == c.to_plan(anatomy).to_dict()
    c = Candidate.full(space)
    c.kept[1] = False
    other = c.copy()
    other.mlp[1][:] = False  # a dropped layer's masks do not change what the subnet computes
    assert other.key() == c.key()


def test_searched_subnets_slice_exactly_and_export(tiny, windows, tmp_path):
    from transformers import AutoModelForCausalLM

    model, anatomy = tiny
    space = _space(anatomy)
    ids = windows[:2]
    for c in _random_candidates(space, 3, seed=7):
        sliced = assert_soft_equals_sliced(model, anatomy, c.to_plan(anatomy), ids)
    sliced.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(input_ids=ids).logits,
                           sliced(input_ids=ids).logits)


def test_obs_start_keeps_the_most_salient_units(tiny, windows):
    model, anatomy = tiny
    saliency = unit_saliency(model, anatomy, windows)
    roles = get("metrics", "obs").role_scores(model, anatomy, windows)
    r = roles[1]
    group1 = (r["q"] + r["o"]).reshape(2, 4, 8).sum(1)[1] + (r["k"] + r["v"]).reshape(2, 8)[1]
    assert np.allclose(saliency.attention[1][1], (group1[:4] + group1[4:]).numpy(), rtol=1e-5)
    assert saliency.attention[1].shape == (2, 4) and saliency.mlp[0].shape == (96,)
    assert saliency.influence.shape == (4,)
    budget = Budget("params", 0.7)
    cost = CostModel(anatomy, budget)
    space = _space(anatomy)
    ratio, pairs, channels = uniform_ratio(space, cost)
    start = initial_candidate(space, saliency, pairs, channels)
    assert start.cost(cost) <= cost.target
    assert start.depth == 4 and {m.sum() for g in start.attention for m in g} == {pairs}
    top = np.argsort(-saliency.mlp[2])[:channels]
    assert set(np.flatnonzero(start.mlp[2])) == set(top)
    assert preset_ranges(0.72)["attention"][0] == 0.7 and preset_ranges(0.3)["mlp"][0] == 0.1
    with pytest.raises(InvalidBudgetError, match="below what the smallest full-depth subnet costs"):
        uniform_ratio(space, CostModel(anatomy, Budget("params", 0.05)))


def _search(anatomy, model, windows, work=None, generations=3, interrupt_after=None, seed=0):
    budget = Budget("params", 0.75)
    cost = CostModel(anatomy, budget)
    space = _space(anatomy)
    saliency = unit_saliency(model, anatomy, windows[:8])
    _, pairs, channels = uniform_ratio(space, cost)
    start = initial_candidate(space, saliency, pairs, channels)
    scorer = LossScorer(windows[8:])
    calls = {"n": 0}

    def fitness(c):
        calls["n"] += 1
        if interrupt_after is not None and calls["n"] > interrupt_after:
            raise KeyboardInterrupt
        return scorer(model, anatomy, c.to_plan(anatomy))

    config = SearchConfig(population=6, mutation=3, crossover=2, top_k=3, generations=generations, tolerance=0.08,
                          seed=seed)
    variation = Variation(space, depth_rule="influence", influence=saliency.influence)
    return EvolutionSearch(space, cost, variation, fitness, config, work_dir=work, describe={"fitness": "loss"}), start


def test_search_is_deterministic_elitist_and_within_budget(tiny, windows):
    model, anatomy = tiny
    search, start = _search(anatomy, model, windows)
    result = search.run(start)
    again, _ = _search(anatomy, model, windows)
    assert again.run(start).best.key() == result.best.key()
    assert result.fitness <= result.initial_fitness  # elitist: never worse than the start
    best = [g.best for g in result.history]
    assert best == sorted(best, reverse=True)
    assert len(result.history) == 4 and result.evaluated == sum(g.evaluated for g in result.history)
    assert search.low <= result.best.cost(search.cost) <= search.cost.target or result.best.key() == start.key()


def test_an_interrupted_search_resumes_to_the_same_result(tiny, windows, tmp_path):
    model, anatomy = tiny
    plain, start = _search(anatomy, model, windows, generations=3)
    want = plain.run(start)
    search, _ = _search(anatomy, model, windows, work=tmp_path, generations=3, interrupt_after=12)
    with pytest.raises(KeyboardInterrupt):
        search.run(start)
    state = json.loads((tmp_path / STATE).read_text())
    assert 0 <= state["generation"] < 3  # stopped midway, after a finished generation
    resumed, _ = _search(anatomy, model, windows, work=tmp_path, generations=3)
    got = resumed.run(start)
    assert got.resumed_from == state["generation"] + 1
    assert got.best.key() == want.best.key() and got.fitness == want.fitness
    assert [g.best for g in got.history] == [g.best for g in want.history]
    lines = (tmp_path / LOG).read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [0, 1, 2, 3]
    assert (tmp_path / PLOT).exists()
    other, _ = _search(anatomy, model, windows, work=tmp_path, generations=3, seed=1)
    with pytest.raises(AmoebaError, match="other settings.*config"):
        other.run(start)
    shorter, _ = _search(anatomy, model, windows, work=tmp_path, generations=2)
    with pytest.raises(AmoebaError, match="already past generation 2"):
        shorter.run(start)


def test_a_finished_search_goes_on_with_more_generations(tiny, windows, tmp_path):
    """More generations on a finished checkpoint continue it: the same as one longer run."""
    model, anatomy = tiny
    longer, start = _search(anatomy, model, windows, generations=3)
    want = longer.run(start)
    first, _ = _search(anatomy, model, windows, work=tmp_path, generations=1)
    first.run(start)
    more, _ = _search(anatomy, model, windows, work=tmp_path, generations=3)
    got = more.run(start)
    assert got.resumed_from == 2 and got.best.key() == want.best.key()
    assert [g.best for g in got.history] == [g.best for g in want.history]


def _context(model, anatomy, windows, budget="0.7", **options):
    return PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse(budget),
                          options={"preset": "smoke", "fitness_windows": 4, "fitness": "loss", **options},
                          calibration=lambda: windows)


def test_the_method_end_to_end(tiny, windows):
    model, anatomy = tiny
    method = get("methods", "searchllm")
    before = [p.detach().clone() for p in model.parameters()]
    result = method.prune(_context(model, anatomy, windows, tolerance=0.1))
    plan = result.plan.validate(anatomy)
    budget = Budget("params", 0.7)
    assert budget.fits(plan, anatomy)
    info = result.info
    assert info["budget_base"] == "all parameters" and info["evaluated"] > 1
    assert info["best"]["fitness"] <= info["initial"]["fitness"]
    errors = info["reformation"]["output_error"]
    assert errors and all(e["reformed"] <= e["dropped"] for e in errors.values())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the shared model is untouched
    assert_soft_equals_sliced(model, anatomy, plan, windows[:2], patch=result.patch)
    sliced_eval = method.prune(_context(model, anatomy, windows, tolerance=0.1, evaluation="sliced"))
    assert sliced_eval.plan.to_dict()["layers"] == result.plan.to_dict()["layers"]  # same search, same subnet
    assert set(sliced_eval.patch) == set(result.patch)  # the same reformation


def test_an_evaluator_from_the_hook_is_the_fitness(tiny, windows):
    from amoeba_plugin import hookimpl
    from amoeba_plugin.eval import Evaluator
    from amoeba_plugin.testing import registered_plugin

    class Depth(Evaluator):
        """Prefers deeper subnets: enough to see that the hook's evaluator drives the search."""
        name = "depth-evaluator"
        fitness_key = "layers"
        higher_is_better = True

        def evaluate(self, model, tokenizer, **options):
            return {"layers": float(sum(1 for m in model.modules() if type(m).__name__.endswith("DecoderLayer")))}

    class Plugin:
        @hookimpl
        def amoeba_select_evaluator(self, method, context):
            return Depth() if method == "searchllm" else None

    model, anatomy = tiny
    with registered_plugin(Plugin(), "test-search-fitness"):
        result = get("methods", "searchllm").prune(_context(model, anatomy, windows, tolerance=0.2,
                                                            reformation="none", evaluation="sliced"))
    assert result.info["fitness"]["name"] == "depth-evaluator" and result.info["fitness"]["higher_is_better"]


def test_presets_scale_with_the_population():
    config = SearchConfig.from_preset("paper", population=20)
    assert (config.population, config.mutation, config.crossover, config.random) == (20, 10, 6, 4)
    assert SearchConfig.from_preset("quick", generations=3).generations == 3
    assert SearchConfig.from_preset("paper").mutation == 50


def test_bad_options_fail_before_the_model_loads():
    from amoeba_plugin.api import PruningConfig, preflight

    for options, match in (({"preset": "huge"}, "unknown search preset"), ({"reformation": "sgd"}, "reformation"),
                           ({"fitness": "acc"}, "unknown fitness"), ({"mutation": 90, "crossover": 30},
                                                                    "exceed the population"),
                           ({"attention_range": "a,b"}, "not a range"), ({"p_mask": 2}, "not a probability"),
                           ({"fitnes": "loss"}, "unknown option")):
        with pytest.raises(AmoebaError, match=match):
            preflight(PruningConfig(method="searchllm", budget="0.5", method_options=options))
    with pytest.raises(InvalidBudgetError, match="cannot meet a 'shape' budget"):
        preflight(PruningConfig(method="searchllm", budget="shape=layers:2"))


def test_the_command_runs_exports_and_refuses_bad_settings_before_loading(tmp_path):
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from amoeba_plugin.cli.main import cli

    model_dir = save_tiny(tmp_path / "tiny")
    run = lambda *a: CliRunner().invoke(cli, ["--quiet", *map(str, a)], catch_exceptions=False)  # noqa: E731
    common = ["searchllm", "run", model_dir, "--budget", "0.75", "--preset", "smoke", "--generations", "1",
              "--samples", "12", "--seq-len", "32", "--fitness-windows", "4", "--tolerance", "0.1", "--no-eval"]
    bad = run(*common, "--option", "mask_mutaton=constructive", "-o", tmp_path / "never")
    assert bad.exit_code == 2 and "unknown option(s) for 'searchllm': mask_mutaton" in bad.output
    assert not (tmp_path / "never").exists()
    done = run(*common, "--work", tmp_path / "w", "-o", tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert "all parameters" in done.output and "export written to" in done.output
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(reloaded).__name__ in ("AmoebaForCausalLM", "LlamaForCausalLM")
    shown = run("searchllm", "show", tmp_path / "w")
    assert shown.exit_code == 0 and "2 generations (finished)" in shown.output
    again = run(*common, "--work", tmp_path / "w", "-o", tmp_path / "out", "--overwrite")  # resumes at the end
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_an_lm_eval_task_as_the_fitness():
    """``fitness=lm-eval:TASK``: candidates are ranked by accuracy on a fixed draw of questions
    (higher is better), on the embedded model and its calibration cloze task."""
    pytest.importorskip("lm_eval")
    from amoeba_plugin.api import get_calibration_dataset
    from amoeba_plugin.models import load_model

    model, tokenizer = load_model("amoeba-tiny-sotu")
    anatomy = anatomy_of(model)
    windows = get_calibration_dataset(tokenizer, "sotu:train", 12, 64, 0)
    context = PruningContext(model=model, tokenizer=tokenizer, anatomy=anatomy, budget=Budget.parse("0.8"),
                             options={"preset": "smoke", "generations": 1, "population": 2, "mutation": 1,
                                      "crossover": 0, "fitness": "lm-eval:amoeba_sotu_cloze_calib",
                                      "fitness_options": {"num_questions": 8, "max_length": 128},
                                      "fitness_windows": 2, "tolerance": 0.1, "reformation": "none"},
                             calibration=lambda: windows)
    result = get("methods", "searchllm").prune(context)
    info = result.info
    assert info["fitness"]["name"] == "lm-eval" and info["fitness"]["higher_is_better"]
    assert 0 <= info["initial"]["fitness"] <= info["best"]["fitness"] <= 1
