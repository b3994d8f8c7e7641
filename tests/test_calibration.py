"""The calibration package: the layer-by-layer pass that statistics and reformation share."""
import contextlib
import importlib
import sys

import pytest
import torch
from amoeba_plugin.testing import make_tiny

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.calibration import layer_pass
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plan import LayerPlan, Plan, source_info
from amoeba_plugin.surgery import apply_soft


@pytest.fixture
def windows():
    return torch.randint(0, 128, (5, 16), generator=torch.Generator().manual_seed(0))


def _last_layer_output(model, anatomy, windows, plan=None):
    """The last decoder layer's output on a plain forward pass (optionally under a soft plan)."""
    seen = []
    last = model.get_submodule(anatomy.layers_path)[-1]
    handle = last.register_forward_hook(lambda m, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad(), (apply_soft(model, anatomy, plan) if plan else contextlib.nullcontext()):
            model(input_ids=windows, use_cache=False)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_the_pass_propagates_what_a_full_forward_computes(family, windows):
    model = make_tiny(family)
    anatomy = anatomy_of(model)
    calls, final = [], {}

    def on_layer(step):
        calls.append(step.layer.index)
        assert len(step.inputs) == 3 and step.outputs is None  # batches of 2, 2 and 1
        final["out"] = step.propagate()

    layer_pass(model, anatomy, windows, on_layer, batch_size=2)
    assert calls == list(range(anatomy.num_layers))
    assert torch.allclose(torch.cat(final["out"]), _last_layer_output(model, anatomy, windows), atol=1e-5)


def test_the_pass_follows_a_subnet_and_skips_its_dropped_layers(windows):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    plan = Plan([LayerPlan(i, kv_groups=[1], mlp_channels=list(range(0, 96, 3))) for i in (0, 1, 3)],
                source=source_info(anatomy), hidden_channels=list(range(60)))
    calls, final = [], {}

    def on_layer(step):
        calls.append(step.layer.index)
        before = [h.clone() for h in step.inputs]
        dense = step.run()  # a calibration forward leaves the inputs alone
        assert len(dense) == len(before) and all(torch.equal(a, b) for a, b in zip(before, step.inputs))
        assert not all(torch.equal(a, b) for a, b in zip(dense, step.run(plan)))  # the subnet's layer differs

    def keep(step):
        final["out"] = step.propagate()

    layer_pass(model, anatomy, windows, on_layer, subnet=plan)
    assert calls == [0, 1, 3]
    layer_pass(model, anatomy, windows, keep, subnet=plan)
    assert torch.allclose(torch.cat(final["out"]), _last_layer_output(model, anatomy, windows, plan), atol=1e-5)


def test_hooks_see_the_linear_inputs_and_are_removed(windows):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    seen = []

    def on_layer(step):
        step.propagate([(step.layer.modules["down"], lambda x: seen.append(x.shape))])
        with pytest.raises(AmoebaError, match="already propagated"):
            step.propagate()

    was = model.training
    model.train()
    layer_pass(model, anatomy, windows, on_layer, batch_size=8)
    assert model.training and len(seen) == anatomy.num_layers and seen[0][-1] == 96
    model.train(was)
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(AmoebaError, match="LongTensor"):
        layer_pass(model, anatomy, windows.float(), on_layer)


@pytest.mark.parametrize("old,new", [
    ("amoeba_plugin.metrics.collect", "amoeba_plugin.calibration"),
    ("amoeba_plugin.allocation", "amoeba_plugin.pruning.allocation"),
    ("amoeba_plugin.compensation", "amoeba_plugin.pruning.compensation"),
    ("amoeba_plugin.reformation", "amoeba_plugin.pruning.reformation"),
    ("amoeba_plugin.uniform", "amoeba_plugin.pruning.uniform"),
])
def test_old_import_paths_warn_and_give_the_moved_module(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
