"""Plans: validation errors that name the fix, JSON round trips, exact accounting."""
import json
import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.errors import PlanError
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.surgery import slice_model
from amoeba_plugin.testing import FAMILIES, make_tiny


@pytest.fixture(scope="module")
def anatomies():
    cache = {}

    def get(family, **overrides):
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            model = make_tiny(family, **overrides)
            cache[key] = (model, anatomy_of(model))
        return cache[key]
    return get


def _full4(**layer1):
    return Plan([LayerPlan(0), LayerPlan(1, **layer1), LayerPlan(2), LayerPlan(3)])


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("plan,match", [
    (_full4(query_heads=[[0, 1], [2]]), "same number of query heads"),                 # GQA
    (_full4(kv_groups=[0], query_heads=[[0], [1]]), "one list of query heads per kept KV group"),
    (_full4(query_heads=[[0], []]), "cannot be empty"),
    (_full4(head_channels=[0, 1, 2, 3]), "RoPE partner"),                               # pairs j, j+4
    (_full4(head_channels=[0, 4, 5]), "RoPE partner"),
    (_full4(kv_groups=[0, 2]), "outside"),                                               # out of range
    (_full4(query_heads=[[0, 4], [1, 2]]), "outside"),
    (_full4(mlp_channels=[0, 96]), "outside"),
    (_full4(head_channels=[0, 8]), "outside"),
    (Plan([LayerPlan(0), LayerPlan(4)]), "does not exist"),
    (Plan([LayerPlan(0)], hidden_channels=[0, 64]), "outside"),
    (Plan([LayerPlan(0)], hidden_channels=[]), "cannot be empty"),
    (Plan([LayerPlan(2), LayerPlan(1)]), "unique and ascending"),                      # unsorted
    (Plan([LayerPlan(1), LayerPlan(1)]), "unique and ascending"),
    (_full4(mlp_channels=[3, 1, 2]), "unique and ascending"),
    (_full4(kv_groups=[1, 1]), "unique and ascending"),
    (_full4(mlp_channels=[0, 1.5]), "list of integers"),
])
def test_invalid_plans_name_the_problem_and_fix(plan, match, anatomies):
    _, anatomy = anatomies("llama")
    with pytest.raises(PlanError, match=match) as err:
        plan.validate(anatomy)
    assert err.value.fix, "every PlanError must say how to fix it"
    assert "Fix:" in str(err.value)


def test_head_channels_refused_with_qk_norm(anatomies):
    _, anatomy = anatomies("qwen3")
    assert anatomy.qk_norm
    with pytest.raises(PlanError, match="q_norm") as err:
        _full4(head_channels=[0, 1, 4, 5]).validate(anatomy)
    assert "whole heads" in err.value.fix
    _full4(query_heads=[[0, 1], [2, 3]]).validate(anatomy)  # whole heads are fine


def test_plan_for_another_model(anatomies):
    _, llama = anatomies("llama")
    _, short = anatomies("llama", num_hidden_layers=2)
    _, qwen2 = anatomies("qwen2")
    plan = Plan.full(llama, method="test")
    plan.validate(llama)
    for other in (short, qwen2):
        with pytest.raises(PlanError, match="another model"):
            plan.validate(other)
    # different weights, same shape: the plan still applies (fine-tuned checkpoints of one base)
    _, reseeded = anatomies("llama", seed=1)
    assert reseeded.fingerprint != llama.fingerprint
    Plan.full(llama).validate(reseeded)
    Plan([LayerPlan(0)], source=dict(plan.source)).validate(short, check_source=False)


# ---------------------------------------------------------------------------------------- JSON
def test_json_round_trip(anatomies, tmp_path):
    _, anatomy = anatomies("llama")
    plan = Plan([LayerPlan(0, kv_groups=[1], query_heads=[[0, 3]], head_channels=[0, 1, 4, 5]),
                 LayerPlan(2, kv_groups=[], mlp_channels=list(range(10))), LayerPlan(3, mlp_channels=[])],
                hidden_channels=list(range(0, 64, 2)), output_bias=True, provenance={"method": "x", "seed": 3})
    plan.source = Plan.full(anatomy).source
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    assert again == plan
    assert Plan.load(plan.save(tmp_path / "plan.json")).to_dict() == plan.to_dict()
    assert Plan.load(tmp_path).to_dict() == plan.to_dict()  # a directory holding plan.json
    again.validate(anatomy)


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else"}', "not an amoeba plan"),
    ('{"format": "amoeba-plan", "version": 99, "layers": []}', "newer"),
    ('{"format": "amoeba-plan", "layers": [{"index": 0, "wings": 2}]}', "malformed"),
])
def test_bad_json(text, match):
    with pytest.raises(PlanError, match=match):
        Plan.from_json(text)


def test_load_missing(tmp_path):
    with pytest.raises(PlanError, match="no plan at"):
        Plan.load(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------- accounting
ACCOUNTING_PLANS = {
    "full": lambda a: Plan.full(a),
    "layers": lambda a: Plan([LayerPlan(1), LayerPlan(3)]),
    "heads": lambda a: Plan([LayerPlan(i, kv_groups=[1], query_heads=[[0, 2]]) for i in range(4)]),
    "mixed": lambda a: Plan([LayerPlan(0, kv_groups=[], mlp_channels=list(range(7))),
                             LayerPlan(1, query_heads=[[1], [2]], mlp_channels=[]), LayerPlan(3)],
                            hidden_channels=list(range(40))),
    "channels": lambda a: Plan([LayerPlan(i, head_channels=None if a.qk_norm else [2, 3, 6, 7],
                                          mlp_channels=list(range(0, 96, 4))) for i in range(4)],
                               output_bias=True),
}


@pytest.mark.parametrize("family", sorted(FAMILIES) + ["qwen2-tied"])
@pytest.mark.parametrize("name", sorted(ACCOUNTING_PLANS))
def test_num_parameters_is_exact(family, name, anatomies):
    model, anatomy = (anatomies("qwen2", tie_word_embeddings=True) if family == "qwen2-tied"
                      else anatomies(family))
    plan = ACCOUNTING_PLANS[name](anatomy)
    sliced = slice_model(model, anatomy, plan)
    real = sum(p.numel() for p in sliced.parameters())
    assert plan.num_parameters(anatomy) == real
    embed = sliced.model.embed_tokens.weight.numel()
    head = 0 if anatomy.tied_embeddings else sliced.lm_head.weight.numel()
    assert plan.num_parameters(anatomy, embeddings=False) == real - embed - head
    if name == "full":
        assert real == sum(p.numel() for p in model.parameters())


def test_macs_ratio_is_sane(anatomies):
    _, anatomy = anatomies("llama")
    full = Plan.full(anatomy)
    assert full.summary(anatomy)["macs_ratio"] == 1.0
    assert full.summary(anatomy)["parameters_ratio"] == 1.0
    half_layers = Plan([LayerPlan(0), LayerPlan(2)])
    fewer_heads = Plan([LayerPlan(0), LayerPlan(2, query_heads=[[0], [0]])])
    ratios = [p.summary(anatomy)["macs_ratio"] for p in (full, half_layers, fewer_heads)]
    assert 1.0 > ratios[1] > ratios[2] > 0
    # only the LM head is left when every layer goes
    empty = Plan([])
    assert empty.macs_per_token(anatomy) == anatomy.vocab_size * anatomy.hidden_size
    # attention over a cached context costs MACs that grow with the context
    assert full.macs_per_token(anatomy, context=100) > full.macs_per_token(anatomy)
    assert (fewer_heads.macs_per_token(anatomy, context=100) - fewer_heads.macs_per_token(anatomy)
            < full.macs_per_token(anatomy, context=100) - full.macs_per_token(anatomy))


def test_is_uniform(anatomies):
    _, anatomy = anatomies("llama")
    assert Plan.full(anatomy).is_uniform(anatomy)
    assert Plan([LayerPlan(0), LayerPlan(3)]).is_uniform(anatomy)
    assert Plan([LayerPlan(i, query_heads=[[0], [1]], mlp_channels=list(range(50))) for i in range(4)]
                ).is_uniform(anatomy)
    assert not Plan([LayerPlan(0, mlp_channels=list(range(50))), LayerPlan(1)]).is_uniform(anatomy)
    assert not Plan([LayerPlan(0, kv_groups=[]), LayerPlan(1, kv_groups=[])]).is_uniform(anatomy)
    assert not Plan([LayerPlan(0, mlp_channels=[])]).is_uniform(anatomy)


def test_shape_and_resolved(anatomies):
    _, anatomy = anatomies("llama")
    plan = Plan([LayerPlan(0, kv_groups=[1], query_heads=[[2, 3]]), LayerPlan(1, kv_groups=[])])
    assert plan.shape(anatomy) == [
        {"index": 0, "query_heads": 2, "kv_groups": 1, "head_dim": 8, "intermediate_size": 96,
         "q_width": 16, "kv_width": 8},
        {"index": 1, "query_heads": 0, "kv_groups": 0, "head_dim": 0, "intermediate_size": 96,
         "q_width": 0, "kv_width": 0},
    ]
    r = plan.resolved(anatomy)
    assert r.layers[0].query_heads == [[2, 3]] and r.layers[1].query_heads == []
    assert r.hidden_channels == list(range(64))
    assert plan.layers[0].mlp_channels is None  # resolving does not mutate


def test_full_plan_records_source(anatomies):
    model, anatomy = anatomies("mistral")
    plan = Plan.full(anatomy, method="m")
    assert plan.source["model_type"] == "mistral" and plan.source["num_layers"] == 4
    assert plan.source["fingerprint"] == anatomy.fingerprint
    assert plan.provenance == {"method": "m"}
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1.0)  # no change: same fingerprint
    assert anatomy_of(model).fingerprint == anatomy.fingerprint


def test_per_group_channels_round_trip_and_count(anatomies):
    """One channel list per kept KV group: JSON round-trip (written as plan version 2), widths, and
    exact parameter and MAC counts (each group's heads keep only their own channels)."""
    _, anatomy = anatomies("llama")  # 8 query heads in 2 groups, head_dim 8, hidden 64
    plan = Plan([LayerPlan(0, head_channels=[[0, 4], [1, 2, 5, 6]]), LayerPlan(1)])
    plan.validate(anatomy)
    data = json.loads(plan.to_json())
    assert data["version"] == 2 and Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()
    assert json.loads(Plan([LayerPlan(0)]).to_json())["version"] == 1  # nothing new: readable by older releases
    s0 = plan.shape(anatomy)[0]
    assert (s0["head_dim"], s0["q_width"], s0["kv_width"]) == (4, 4 * 2 + 4 * 4, 2 + 4)
    full = Plan([LayerPlan(0), LayerPlan(1)])
    saved_rows = (64 - 24) * 64 * 2 + (16 - 6) * 64 * 2  # q + o, and k + v
    assert full.num_parameters(anatomy) - plan.num_parameters(anatomy) == saved_rows
    assert full.macs_per_token(anatomy) - plan.macs_per_token(anatomy) == saved_rows
