"""Data safety of the search's work directory: restart deletes only a search's own files (its
state.json is the marker); someone else's state.json is refused in one line, never deleted."""
import json

import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.eval.scorers import LossScorer
from amoeba_plugin.testing import make_tiny
from amoeba_searchllm.init import initial_candidate, uniform_ratio, unit_saliency
from amoeba_searchllm.operators import Variation
from amoeba_searchllm.search import LOG, STATE, EvolutionSearch, SearchConfig
from amoeba_searchllm.space import CostModel, SearchSpace


def _search(work):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    cost = CostModel(anatomy, Budget("params", 0.75))
    space = SearchSpace.build(anatomy, (0.25, 1.0), (0.1, 1.0), 3, keep_last=1)
    saliency = unit_saliency(model, anatomy, windows[:4])
    _, pairs, channels = uniform_ratio(space, cost)
    start = initial_candidate(space, saliency, pairs, channels)
    scorer = LossScorer(windows[4:])
    config = SearchConfig(population=4, mutation=2, crossover=1, top_k=2, generations=1, tolerance=0.08)
    search = EvolutionSearch(space, cost, Variation(space, depth_rule="random"),
                             lambda c: scorer(model, anatomy, c.to_plan(anatomy)), config, work_dir=work,
                             describe={"fitness": "loss"})
    return search, start


def test_restart_refuses_a_foreign_state_json_and_deletes_only_a_search(tmp_path):
    (tmp_path / STATE).write_text(json.dumps({"my": "data"}))
    (tmp_path / LOG).write_text("mine\n")
    search, start = _search(tmp_path)
    for restart in (False, True):
        with pytest.raises(AmoebaError, match="not a search checkpoint") as info:
            search.run(start, restart=restart)
        assert "restart" not in str(info.value).split("Fix:")[1]  # the fix never suggests deleting it
    assert json.loads((tmp_path / STATE).read_text()) == {"my": "data"} and (tmp_path / LOG).read_text() == "mine\n"

    own = tmp_path / "own"
    search, start = _search(own)
    search.run(start)
    first = json.loads((own / STATE).read_text())
    search.run(start, restart=True)  # a search's own directory: restart starts over
    assert json.loads((own / STATE).read_text())["format"] == first["format"]
