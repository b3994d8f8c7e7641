"""Soft and physical surgery agree, for every family and every kind of prunable unit.

For each (family, plan): the masked forward equals the sliced forward, the mask really changes the
output, removing the mask restores the dense model bit for bit, the sliced model generates the same
tokens with and without its KV cache, and it survives save_pretrained + AutoModelForCausalLM.
"""
import pytest
import torch

import amoeba_plugin  # noqa: F401  (registers the `amoeba` architecture with the Auto classes)
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.surgery import apply_soft, slice_model
from amoeba_plugin.testing import FAMILIES, assert_soft_equals_sliced, make_tiny

# tiny models: 4 layers, hidden 64, 8 query heads in 2 KV groups (4 per group), head_dim 8, MLP 96
HIDDEN = sorted(list(range(0, 64, 2)) + [1, 3, 61])


def _layers(**per_layer):
    """Four LayerPlans, with keyword overrides for layer ``i`` given as ``l<i>={...}``."""
    return [LayerPlan(i, **per_layer.get(f"l{i}", {})) for i in range(4)]


PLANS = {
    "whole-layers": lambda: Plan([LayerPlan(0), LayerPlan(2), LayerPlan(3)]),
    "kv-groups": lambda: Plan(_layers(l0={"kv_groups": [1]}, l2={"kv_groups": [0]})),
    # different heads in different groups, the same count in each (GQA)
    "query-heads": lambda: Plan(_layers(l0={"query_heads": [[0, 2], [1, 3]]},
                                        l1={"kv_groups": [1], "query_heads": [[3]]},
                                        l3={"query_heads": [[1], [0]]})),
    # RoPE rotates channel j with j + head_dim/2 = j + 4: keep pairs
    "head-channels": lambda: Plan(_layers(l0={"head_channels": [0, 2, 4, 6]},
                                          l2={"head_channels": [1, 3, 5, 7]})),
    # each KV group keeps its own channels (Search for Efficient LLMs): packed rows, padded heads
    "group-channels": lambda: Plan(_layers(l0={"head_channels": [[0, 4], [1, 2, 5, 6]]},
                                           l2={"head_channels": [[0, 1, 2, 4, 5, 6], [3, 7]]},
                                           l3={"kv_groups": [1], "query_heads": [[0, 2]],
                                               "head_channels": [[1, 5]]})),
    "mlp-channels": lambda: Plan([LayerPlan(i, mlp_channels=list(range(i, 96, 2 + i))) for i in range(4)]),
    "hidden-channels": lambda: Plan(_layers(), hidden_channels=HIDDEN),
    "no-attention": lambda: Plan(_layers(l1={"kv_groups": []})),
    "no-mlp": lambda: Plan(_layers(l2={"mlp_channels": []})),
    "mix": lambda: Plan([
        LayerPlan(0, kv_groups=[0], query_heads=[[1, 2]], mlp_channels=list(range(0, 96, 3))),
        LayerPlan(1, kv_groups=[]),
        LayerPlan(3, query_heads=[[0], [3]], head_channels=[1, 2, 5, 6], mlp_channels=[]),
    ], hidden_channels=HIDDEN),
}
CASES = [(f, p) for f in sorted(FAMILIES) for p in PLANS  # qwen3's q_norm/k_norm span the whole head
         if not (f == "qwen3" and p in ("head-channels", "group-channels"))]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(family):
        if family not in cache:
            model = make_tiny(family)
            cache[family] = (model, anatomy_of(model))
        return cache[family]
    return get


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))


def _plan(name, family):
    plan = PLANS[name]()
    if family == "qwen3" and plan.layers and any(lp.head_channels for lp in plan.layers):
        for lp in plan.layers:  # the mix keeps whole heads on qwen3
            lp.head_channels = None
    return plan


def _no_soft_leftovers(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"hook left on {type(m).__name__}"
        assert "forward" not in m.__dict__, f"forward override left on {type(m).__name__}"


def _generate(model, ids, **kw):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                          pad_token_id=0, **kw)


@pytest.mark.parametrize("family,plan_name", CASES)
def test_soft_equals_sliced(family, plan_name, models, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model, anatomy = models(family)
    plan = _plan(plan_name, family)
    with torch.no_grad():
        dense = model(ids).logits
        with apply_soft(model, anatomy, plan):
            masked = model(ids).logits
        restored = model(ids).logits
        _no_soft_leftovers(model)
        sliced = slice_model(model, anatomy, plan)
        small = sliced(ids).logits

    assert torch.equal(restored, dense), "removing the soft mask must restore the dense model exactly"
    assert (masked - dense).abs().max() > 1e-3, "the mask did not change the output"
    torch.testing.assert_close(small, masked, atol=1e-5, rtol=0)
    assert plan.num_parameters(anatomy) == sum(p.numel() for p in sliced.parameters())

    assert torch.equal(_generate(sliced, ids), _generate(sliced, ids, use_cache=False))

    sliced.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(sliced)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, small)


def test_stock_class_when_expressible(models, ids):
    """Uniform whole-unit plans stay in the family's own class; heterogeneous ones become `amoeba`."""
    model, anatomy = models("llama")
    assert type(slice_model(model, anatomy, PLANS["whole-layers"]())).__name__ == "LlamaForCausalLM"
    assert type(slice_model(model, anatomy, PLANS["mix"]())).__name__ == "AmoebaForCausalLM"
    uniform = Plan([LayerPlan(i, query_heads=[[0, 1], [2, 3]], mlp_channels=list(range(48))) for i in range(4)])
    assert type(slice_model(model, anatomy, uniform)).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_patch_output_bias(family, models, ids):
    """Bias compensation: a patch adds o_proj/down_proj biases; masked and sliced agree."""
    model, anatomy = models(family)
    g = torch.Generator().manual_seed(3)
    patch = {"model.layers.1.mlp.down_proj.bias": torch.randn(64, generator=g) * 0.1,
             "model.layers.1.self_attn.o_proj.bias": torch.randn(64, generator=g) * 0.1}
    plan = Plan([LayerPlan(0), LayerPlan(1, kv_groups=[1], mlp_channels=list(range(0, 96, 2))), LayerPlan(3)],
                output_bias=True)
    with torch.no_grad():
        with apply_soft(model, anatomy, plan):
            unpatched = model(ids).logits
        with apply_soft(model, anatomy, plan, patch):
            masked = model(ids).logits
        _no_soft_leftovers(model)
        sliced = slice_model(model, anatomy, plan, patch=patch)
        small = sliced(ids).logits
    assert (masked - unpatched).abs().max() > 1e-4, "the patch did not change the output"
    torch.testing.assert_close(small, masked, atol=1e-5, rtol=0)
    state = sliced.state_dict()
    assert torch.equal(state["model.layers.1.mlp.down_proj.bias"], patch["model.layers.1.mlp.down_proj.bias"])
    assert plan.num_parameters(anatomy) == sum(p.numel() for p in sliced.parameters())


def test_tied_embeddings(ids):
    model = make_tiny("qwen2", tie_word_embeddings=True)
    anatomy = anatomy_of(model)
    assert anatomy.tied_embeddings
    plan = PLANS["mix"]()
    sliced = assert_soft_equals_sliced(model, anatomy, plan, ids)
    assert sliced.lm_head.weight.data_ptr() == sliced.model.embed_tokens.weight.data_ptr()
    assert plan.num_parameters(anatomy) == sum(p.numel() for p in sliced.parameters())


def test_reslicing_an_amoeba_model(models, ids):
    """A sliced (amoeba) model is itself prunable: slicing twice equals masking the slice."""
    model, anatomy = models("mistral")
    first = slice_model(model, anatomy, PLANS["head-channels"]())
    a2 = anatomy_of(first)
    assert a2.model_type == "amoeba" and a2.layer(0).head_channels == (0, 2, 4, 6)
    plan = Plan([LayerPlan(0, kv_groups=[1]), LayerPlan(1, mlp_channels=list(range(50))), LayerPlan(3)])
    assert_soft_equals_sliced(first, a2, plan, ids)


def test_group_channels_pack_rows_and_reslice(models, ids):
    """Per-KV-group head channels store only the kept rows; the packed model has its own anatomy
    (channels per group) and can be pruned again by whole groups, layers and MLP channels."""
    model, anatomy = models("llama")
    plan = PLANS["group-channels"]()
    first = slice_model(model, anatomy, plan)
    attn = first.model.layers[0].self_attn
    assert attn.group_head_dims == [2, 4] and attn.head_dim == 4
    assert attn.q_proj.out_features == 4 * (2 + 4) and attn.k_proj.out_features == 6
    assert first.config.layer_specs[3]["head_channels"] == [1, 5]  # one group left: a plain channel list
    a2 = anatomy_of(first)
    assert a2.layer(0).group_head_dims == (2, 4) and a2.layer(0).q_width == 24
    assert Plan.full(a2).num_parameters(a2) == sum(p.numel() for p in first.parameters())
    again = Plan([LayerPlan(0, kv_groups=[1], query_heads=[[1, 3]], mlp_channels=list(range(40))),
                  LayerPlan(2), LayerPlan(3)])
    second = assert_soft_equals_sliced(first, a2, again, ids)
    assert second.config.layer_specs[0]["head_channels"] == [1, 2, 5, 6]
    assert second.config.layer_specs[1]["head_channels"] == [[0, 1, 2, 4, 5, 6], [3, 7]]


def test_group_channels_are_validated(models):
    from amoeba_plugin.errors import PlanError

    model, anatomy = models("llama")
    for bad, message in (([[0, 4]], "for 1 KV groups but keeps 2"), ([[0, 4], [1]], "RoPE partner"),
                         ([[0, 4], []], "cannot be empty")):
        with pytest.raises(PlanError, match=message):
            Plan(_layers(l0={"head_channels": bad})).validate(anatomy)
    packed = slice_model(model, anatomy, PLANS["group-channels"]())
    with pytest.raises(PlanError, match="already has pruned head channels"):
        Plan(_layers(l0={"head_channels": [[0, 2], [0, 2]]})).validate(anatomy_of(packed), check_source=False)
