"""The testing kit (amoeba_plugin.testing) that plugin authors use: loaded as a pytest plugin, its
models are reproducible, its windows are what a run samples, registration never leaks, and the
soft-equals-sliced assertion fails when a plan and its sliced model disagree."""
import subprocess
import sys

import pytest
import torch

from amoeba_plugin import hookimpl, plugins
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.testing import (
    COMMON, FAMILIES, assert_soft_equals_sliced, make_tiny, registered_plugin, text_windows, token_ids,
)


class _KeepAll(Method):
    name = "test-kit-keep-all"

    def prune(self, context):
        return PruneResult(Plan.full(context.anatomy, method=self.name))


class _Plugin:
    @hookimpl
    def amoeba_register_methods(self, register):
        register(_KeepAll())


def test_kit_is_a_pytest_plugin(request):
    """Loaded through the pytest11 entry point (or -p), so its fixtures need no conftest."""
    import amoeba_plugin.testing

    assert request.config.pluginmanager.get_plugin("amoeba_plugin.testing") is amoeba_plugin.testing


def test_importing_the_package_does_not_load_the_kit():
    code = "import sys, amoeba_plugin; assert 'amoeba_plugin.testing' not in sys.modules and 'pytest' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_tiny_models_are_reproducible_and_of_every_family(tiny_model):
    family = tiny_model.config.model_type
    assert family in FAMILIES
    assert tiny_model.config.num_hidden_layers == COMMON["num_hidden_layers"]
    again = make_tiny(family)
    assert all(torch.equal(a, b) for a, b in zip(tiny_model.state_dict().values(), again.state_dict().values()))
    other = make_tiny(family, seed=1)
    assert not torch.equal(tiny_model.model.norm.weight, other.model.norm.weight)


def test_windows(input_ids, tiny_windows, embedded_windows):
    assert input_ids.shape == (2, 12) and torch.equal(input_ids, token_ids(2, 12, seed=1))
    assert tiny_windows.shape == (8, 32) and int(tiny_windows.max()) < COMMON["vocab_size"]
    from amoeba_plugin.api import get_calibration_dataset
    from amoeba_plugin.models import load_model

    _, tokenizer = load_model("amoeba-tiny-sotu")
    assert torch.equal(embedded_windows, get_calibration_dataset(tokenizer, "sotu:train", 4, 64, 0))
    assert torch.equal(text_windows(2, 16, seed=3, tokenizer=tokenizer),
                       get_calibration_dataset(tokenizer, "sotu:train", 2, 16, 3))


def test_registered_plugin_is_gone_after_the_block_even_on_error():
    with pytest.raises(RuntimeError, match="inside"):
        with registered_plugin(_Plugin(), "test-kit-plugin"):
            assert plugins.owner("methods", "test-kit-keep-all") == "test-kit-plugin"
            raise RuntimeError("inside")
    assert "test-kit-keep-all" not in plugins.registry("methods")
    assert not plugins.get_plugin_manager().has_plugin("test-kit-plugin")


def test_register_plugin_fixture(register_plugin):
    assert register_plugin(_Plugin(), "test-kit-fixture").__class__ is _Plugin
    assert "test-kit-keep-all" in plugins.registry("methods")


def test_register_plugin_fixture_cleaned_up():
    assert not plugins.get_plugin_manager().has_plugin("test-kit-fixture")  # the test above ran first


def test_assert_soft_equals_sliced(tiny_llama, input_ids, monkeypatch):
    import copy

    import amoeba_plugin.surgery

    anatomy = anatomy_of(tiny_llama)
    plan = Plan([LayerPlan(0, kv_groups=[1], mlp_channels=list(range(40))), LayerPlan(2), LayerPlan(3)])
    sliced = assert_soft_equals_sliced(tiny_llama, anatomy, plan, input_ids)
    assert plan.num_parameters(anatomy) == sum(p.numel() for p in sliced.parameters())
    # a slicer that ignores the plan runs the dense model, which the mask changed: the assertion fails
    monkeypatch.setattr(amoeba_plugin.surgery, "slice_model", lambda model, *a, **k: copy.deepcopy(model))
    with pytest.raises(AssertionError):
        assert_soft_equals_sliced(tiny_llama, anatomy, plan, input_ids)
