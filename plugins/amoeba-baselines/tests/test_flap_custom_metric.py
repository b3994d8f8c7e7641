"""docs/plugins.md, "A metric FLAP accepts": the example metric, registered in process, drives flap;
a metric that scores only layers is refused with one line."""
import pytest
import torch

from amoeba_plugin import hookimpl
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.methods import PruningContext
from amoeba_plugin.metrics.linear import LinearMetric, weight
from amoeba_plugin.pipeline import run_method
from amoeba_plugin.plugins import get
from amoeba_plugin.testing import make_tiny


class SquaredMagnitude(LinearMetric):
    name = "squared-magnitude"
    description = "W^2, no calibration"
    units = frozenset({"kv_group", "query_head", "mlp_channel", "head_channel", "hidden_channel"})

    def saliency(self, model, layer, role, prepared, **options):
        return weight(model, layer.modules[role]) ** 2


class Registers:
    @hookimpl
    def amoeba_register_metrics(self, register):
        register(SquaredMagnitude())


def test_flap_takes_a_plugin_linear_metric_and_refuses_a_layer_metric(register_plugin):
    register_plugin(Registers(), "test-squared-magnitude")
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))

    def context(metric):
        return PruningContext(model=model, tokenizer=None, anatomy=anatomy, budget=Budget.parse("0.7"),
                              options={"metric": metric}, calibration=lambda: windows)

    run = run_method(get("methods", "flap"), context("squared-magnitude"))
    assert run.plan.provenance["metric"] == "squared-magnitude"
    assert Budget.parse("0.7").fits(run.plan, anatomy)
    with pytest.raises(AmoebaError, match="does not score single linears"):
        run_method(get("methods", "flap"), context("block-influence"))
