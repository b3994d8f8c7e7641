"""AmoebaLLM depth stage: the DP recurrence (exactness on additive scores, evaluation count, stored
non-nested masks, serialisation) and the knowledge-preservation scorers (soft layer skipping equals a
physically sliced model; lm-eval questions drawn stratified and seeded)."""
import itertools
import json
import math
import random
import textwrap

import pytest
import torch
from amoeba_amoeballm.depth import DepthTable, dp_layer_selection, expected_evaluations
from amoeba_amoeballm.scorers import (
    LMEvalScorer,
    LossScorer,
    PerplexityScorer,
    build_scorer,
    layer_plan,
    stratified_indices,
)

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.metrics.loss import lm_loss
from amoeba_plugin.surgery import slice_model
from amoeba_plugin.testing import make_tiny


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU two threads wait on each other."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def removed(mask):
    return {i for i, keep in enumerate(mask) if not keep}


# ---------------------------------------------------------------------- the DP
@pytest.mark.parametrize("higher_is_better", [False, True])
def test_dp_equals_brute_force_on_an_additive_score(higher_is_better):
    rng = random.Random(3)
    L, K, min_layers = 9, 2, 3
    weights = [rng.uniform(-1, 1) for _ in range(L)]
    calls = []

    def evaluate(kept):
        calls.append(list(kept))
        return sum(w for i, w in enumerate(weights) if i not in kept)

    table = dp_layer_selection(L, evaluate, min_layers=min_layers, keep_last=K, higher_is_better=higher_is_better,
                               show_progress=False)
    best = max if higher_is_better else min
    N, M = L - K, L - min_layers
    assert sorted(table.masks) == list(range(M + 1)) and table.masks[0] == [1] * L
    for m in range(1, M + 1):
        optimum = best(sum(weights[i] for i in combo) for combo in itertools.combinations(range(N), m))
        assert table.scores[m] == pytest.approx(optimum)
        assert sum(weights[i] for i in removed(table.masks[m])) == pytest.approx(optimum)
        assert len(removed(table.masks[m])) == m
    assert all(set(range(N, L)) <= set(kept) for kept in calls)  # the last K are never removed
    assert all(kept == sorted(set(kept)) for kept in calls)
    assert table.depths() == list(range(L, min_layers - 1, -1))
    assert table.kept_layers(L - 2) == [i for i in range(L) if i not in removed(table.masks[2])]


def test_evaluation_count_matches_the_closed_form():
    table = dp_layer_selection(32, lambda kept: 0.0, min_layers=20, keep_last=1, show_progress=False)
    assert table.evaluations == len(table.eval_seconds) == expected_evaluations(31, 12) == 306
    assert table.depths() == list(range(32, 19, -1))
    assert all(mask[31] == 1 for mask in table.masks.values())
    for L, K, lo in [(8, 1, 4), (6, 0, 1), (5, 5, 5), (7, 3, 3)]:
        t = dp_layer_selection(L, lambda kept: float(len(kept)), min_layers=lo, keep_last=K, show_progress=False)
        N, M = L - K, L - lo
        assert t.evaluations == sum(min(n, M) for n in range(1, N + 1)) == expected_evaluations(N, M)


def test_masks_are_stored_per_depth_even_when_not_nested():
    # removing layer 0 alone is best, but removing {1, 2} beats {0, 2}: the DP keeps both answers as found
    cost = {frozenset(): 0.0, frozenset({0}): 0.5, frozenset({1}): 2.0, frozenset({2}): 1.0,
            frozenset({1, 2}): 1.5, frozenset({0, 2}): 3.0, frozenset({0, 1}): 3.0}
    table = dp_layer_selection(4, lambda kept: cost[frozenset(set(range(4)) - set(kept))], min_layers=2,
                               show_progress=False)
    assert removed(table.masks[1]) == {0} and removed(table.masks[2]) == {1, 2}
    assert table.scores == {1: 0.5, 2: 1.5}
    assert table.kept_layers(3) == [1, 2, 3] and table.kept_layers(2) == [0, 3]
    assert table.removed_layers(2) == [1, 2]


def test_depth_table_json_round_trip():
    table = dp_layer_selection(6, lambda kept: 1.0 / len(kept), min_layers=3, show_progress=False)
    table.scores[0] = 1 / 6
    table.scorer = {"name": "toy", "options": {"a": 1}}
    text = json.dumps(table.to_dict(), allow_nan=False)
    back = DepthTable.from_dict(json.loads(text))
    assert back == table and all(isinstance(m, int) for m in back.masks) and all(isinstance(m, int) for m in back.scores)
    inf = DepthTable(3, 1, 2, False, {0: [1, 1, 1], 1: [0, 1, 1]}, {1: math.inf})
    assert DepthTable.from_dict(json.loads(json.dumps(inf.to_dict(), allow_nan=False))).scores == {1: math.inf}
    with pytest.raises(AmoebaError, match="not an AmoebaLLM depth table"):
        DepthTable.from_dict({"format": "other"})
    bad = table.to_dict()
    bad["masks"]["1"] = [1] * 6
    with pytest.raises(AmoebaError, match="does not remove exactly 1"):
        DepthTable.from_dict(bad)


def test_bad_dp_arguments_raise_amoeba_errors():
    ok = lambda kept: 0.0  # noqa: E731
    for kwargs, match in [(dict(num_layers=8, min_layers=0), "min_layers=0"),
                          (dict(num_layers=8, min_layers=9), "min_layers=9"),
                          (dict(num_layers=8, min_layers=2, keep_last=3), "below keep_last"),
                          (dict(num_layers=8, min_layers=4, keep_last=-1), "keep_last=-1"),
                          (dict(num_layers=0, min_layers=1), "at least one layer"),
                          (dict(num_layers=8, min_layers=4.0), "integer")]:
        with pytest.raises(AmoebaError, match=match):
            dp_layer_selection(kwargs.pop("num_layers"), ok, show_progress=False, **kwargs)
    with pytest.raises(AmoebaError, match="callable"):
        dp_layer_selection(4, None, min_layers=2)
    with pytest.raises(AmoebaError, match="NaN"):
        dp_layer_selection(4, lambda kept: float("nan"), min_layers=2, show_progress=False)
    with pytest.raises(AmoebaError, match="not a number"):
        dp_layer_selection(4, lambda kept: "good", min_layers=2, show_progress=False)
    with pytest.raises(AmoebaError, match="only 3 are removable"):
        expected_evaluations(3, 5)
    table = dp_layer_selection(4, ok, min_layers=3, show_progress=False)
    with pytest.raises(AmoebaError, match="depth 2 is not in this depth table"):
        table.kept_layers(2)


# ---------------------------------------------------------------------- scorers
def test_loss_scorer_equals_the_sliced_model():
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    full = lm_loss(model, windows)
    scorer = LossScorer(windows, batch_size=2)
    for kept in ([0, 2, 3], [3], [1, 2]):
        sliced = slice_model(model, anatomy, layer_plan(anatomy, kept))
        assert sliced.config.num_hidden_layers == len(kept)
        assert scorer(model, anatomy, kept) == pytest.approx(lm_loss(sliced, windows), rel=1e-5)
    assert scorer(model, anatomy, [0, 1, 2, 3]) == pytest.approx(full, rel=1e-6)
    assert lm_loss(model, windows) == full  # nothing left applied
    ppl = PerplexityScorer(windows)(model, anatomy, [0, 2, 3])
    assert ppl == pytest.approx(math.exp(scorer(model, anatomy, [0, 2, 3])), rel=1e-6)
    assert scorer.describe()["windows"] == 3 and not scorer.higher_is_better
    # the DP on a real model: the stored score is the scorer's value for the stored subnet
    table = dp_layer_selection(4, lambda kept: scorer(model, anatomy, kept), min_layers=2, show_progress=False)
    assert table.evaluations == expected_evaluations(3, 2) == 5
    for depth in (3, 2):
        assert table.scores[4 - depth] == pytest.approx(scorer(model, anatomy, table.kept_layers(depth)))


def test_build_scorer_and_bad_scorer_arguments():
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    assert isinstance(build_scorer("loss", model, None, anatomy, windows, 0), LossScorer)
    assert isinstance(build_scorer(None, model, None, anatomy, windows, 0, batch_size=1), LossScorer)
    assert isinstance(build_scorer("perplexity", model, None, anatomy, windows, 0), PerplexityScorer)
    lm = build_scorer("lm-eval:amoeba_sotu_cloze_calib", model, object(), anatomy, windows, 7, num_questions=5)
    assert isinstance(lm, LMEvalScorer) and lm.seed == 7 and lm.higher_is_better
    with pytest.raises(AmoebaError, match="unknown depth scorer 'mmlu'.*lm-eval:TASK"):
        build_scorer("mmlu", model, None, anatomy, windows, 0)
    with pytest.raises(AmoebaError, match="needs a task"):
        build_scorer("lm-eval:", model, object(), anatomy, windows, 0)
    with pytest.raises(AmoebaError, match="does not take these options"):
        build_scorer("loss", model, None, anatomy, windows, 0, num_questions=3)
    with pytest.raises(AmoebaError, match="calibration windows"):
        LossScorer(windows.float())
    with pytest.raises(AmoebaError, match="tokenizer"):
        LMEvalScorer(None, "amoeba_sotu_cloze_calib")
    with pytest.raises(AmoebaError, match="one task or group"):
        LMEvalScorer(object(), "a,b")


def test_stratified_indices_are_equal_per_subtask_and_seeded():
    sizes = {"s_a": 50, "s_b": 200, "s_c": 31}
    draw = stratified_indices(sizes, 30, seed=0)
    assert sorted(draw) == sorted(sizes) and {len(v) for v in draw.values()} == {10}
    assert all(v == sorted(set(v)) and 0 <= v[0] and v[-1] < sizes[k] for k, v in draw.items())
    assert draw == stratified_indices(sizes, 30, seed=0)
    assert draw != stratified_indices(sizes, 30, seed=1)
    assert draw["s_a"] != list(range(10))  # not the first rows
    assert {len(v) for v in stratified_indices(sizes, 300, seed=0).values()} == {31}  # capped by the smallest
    # adding a subtask does not change the others' questions
    assert stratified_indices({**sizes, "s_d": 40}, 40, seed=0)["s_a"] == draw["s_a"]
    one = stratified_indices({"t": 400}, 25, seed=3)
    assert len(one["t"]) == 25 and one != stratified_indices({"t": 400}, 25, seed=4)
    with pytest.raises(AmoebaError, match="fewer than the 3 subtasks"):
        stratified_indices(sizes, 2, seed=0)
    with pytest.raises(AmoebaError, match="positive integer"):
        stratified_indices(sizes, 0, seed=0)


def test_macro_average_over_subtasks():
    scorer = LMEvalScorer(object(), "grp", metric="acc")
    result = {"results": {"a": {"acc": 0.5}, "b": {"acc": 1.0}, "c": {"acc": 0.0}}}
    assert scorer.aggregate(result, {"a": [0], "b": [1], "c": [2]}) == pytest.approx(0.5)
    with pytest.raises(AmoebaError, match="no 'acc_norm'"):
        LMEvalScorer(object(), "grp", metric="acc_norm").aggregate(result, {"a": [0]})


# ---------------------------------------------------------------------- lm-eval, for real
TINY_DATA = '''
import datasets

WORDS = ["nation", "people", "congress", "peace", "union", "war", "law", "trade", "labor", "tax", "army", "navy"]


def _docs(n, shift):
    return [{"context": f"The {WORDS[(i + shift) % 12]} of the United States is", "choices": [
        "strong.", "a fish.", "blue cheese.", "upside down."], "label": 0} for i in range(n)]


def part_a(**_):
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_docs(7, 0))})


def part_b(**_):
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_docs(12, 5))})
'''


def _task_yaml(name, fn):
    return textwrap.dedent(f"""\
        task: {name}
        custom_dataset: !function tinydata.{fn}
        output_type: multiple_choice
        test_split: test
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: choices
        doc_to_target: label
        target_delimiter: " "
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
        """)


@pytest.fixture(scope="module")
def tiny_group(tmp_path_factory):
    pytest.importorskip("lm_eval")
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "tinydata.py").write_text(TINY_DATA)
    (folder / "amoeba_test_part_a.yaml").write_text(_task_yaml("amoeba_test_part_a", "part_a"))
    (folder / "amoeba_test_part_b.yaml").write_text(_task_yaml("amoeba_test_part_b", "part_b"))
    (folder / "amoeba_test_group.yaml").write_text(textwrap.dedent("""\
        group: amoeba_test_group
        task: [amoeba_test_part_a, amoeba_test_part_b]
        aggregate_metric_list:
          - metric: acc
            weight_by_size: false
        metadata:
          version: 1.0
        """))
    return str(folder)


@pytest.fixture(scope="module")
def embedded():
    from amoeba_plugin.models import load_model

    model, tokenizer = load_model("amoeba-tiny-sotu")
    return model, tokenizer, anatomy_of(model)


def test_lm_eval_scorer_on_a_group_is_stratified_and_macro_averaged(tiny_group, embedded):
    from amoeba_plugin.plugins import get

    model, tokenizer, anatomy = embedded
    scorer = LMEvalScorer(tokenizer, "amoeba_test_group", num_questions=6, seed=0, include_path=tiny_group,
                          max_length=256)
    assert scorer.subtask_sizes() == {"amoeba_test_part_a": 7, "amoeba_test_part_b": 12}
    samples = scorer.samples()
    assert {k: len(v) for k, v in samples.items()} == {"amoeba_test_part_a": 3, "amoeba_test_part_b": 3}
    assert samples == LMEvalScorer(tokenizer, "amoeba_test_group", num_questions=6, seed=0,
                                   include_path=tiny_group).samples()
    assert samples != LMEvalScorer(tokenizer, "amoeba_test_group", num_questions=6, seed=5,
                                   include_path=tiny_group).samples()
    kept = [0, 1, 2, 3, 4, 7]
    value = scorer(model, anatomy, kept)
    from amoeba_plugin.surgery import apply_soft

    with apply_soft(model, anatomy, layer_plan(anatomy, kept)):
        direct = get("evaluators", "lm-eval")(model, tokenizer, tasks=["amoeba_test_group"], samples=samples,
                                               include_path=tiny_group, max_length=256, seed=0)
    assert direct["n_samples"]["amoeba_test_part_a"]["effective"] == 3
    per = [direct["results"][t]["acc"] for t in sorted(samples)]
    assert value == pytest.approx(sum(per) / 2)
    described = scorer.describe()
    assert described["per_subtask"] == 3 and described["subtasks"] == 2 and "macro" in described["aggregation"]
    with pytest.raises(AmoebaError, match="limit and samples"):
        get("evaluators", "lm-eval")(model, tokenizer, tasks=["amoeba_test_group"], samples=samples, limit=2,
                                     include_path=tiny_group)


@pytest.mark.slow
def test_lm_eval_scorer_on_the_calibration_cloze_task(embedded):
    from amoeba_plugin.eval.lm_eval import packaged_tasks
    from amoeba_plugin.eval.task_data import sotu_cloze, sotu_cloze_calib

    model, tokenizer, anatomy = embedded
    assert packaged_tasks()["amoeba_sotu_cloze_calib"]["metrics"] == ["acc", "acc_norm"]
    calib, held_out = sotu_cloze_calib(), sotu_cloze()
    contexts = set(held_out["test"]["context"]) | set(held_out["train"]["context"])
    assert not contexts & set(calib["test"]["context"])  # disjoint from the held-out and the few-shot items
    scorer = LMEvalScorer(tokenizer, "amoeba_sotu_cloze_calib", num_questions=16, seed=0, max_length=256)
    assert scorer.subtask_sizes() == {"amoeba_sotu_cloze_calib": 400}
    full = scorer(model, anatomy, list(range(8)))
    assert 0.0 <= full <= 1.0 and full == scorer(model, anatomy, list(range(8)))
    table = dp_layer_selection(8, lambda kept: scorer(model, anatomy, kept), min_layers=7, keep_last=5,
                               higher_is_better=True, show_progress=False)
    assert table.evaluations == expected_evaluations(3, 1) == 3 and table.depths() == [8, 7]
    assert table.scores[1] == scorer(model, anatomy, table.kept_layers(7))
