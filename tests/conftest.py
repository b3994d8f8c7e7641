"""The host's own test helpers. Tiny models, windows and the plugin-registration fixture come from
the testing kit (``amoeba_plugin.testing``, a pytest plugin); what is here is only what the host
tests need beyond it: a method that needs calibration, since no plugin is installed for them."""
import pytest

from amoeba_plugin import hookimpl
from amoeba_plugin.pruning.uniform import UniformWidthMethod


class CalibratedUniform(UniformWidthMethod):
    """The built-in uniform method ranking by the (built-in) wanda-sp metric, so it needs calibration
    text: stands in for a plugin method in tests of what the host does with calibration data."""

    name = "test-calibrated"
    description = "uniform width ranked by the wanda-sp metric; needs calibration (tests only)"
    capabilities = frozenset({"width", "calibration"})
    default_options = {"metric": "wanda-sp", "keep_layers": []}


class _CalibratedPlugin:
    @hookimpl
    def amoeba_register_methods(self, register):
        register(CalibratedUniform())


@pytest.fixture
def calibrated_method(register_plugin):
    """The name of a registered method that needs calibration (registered for this test only)."""
    register_plugin(_CalibratedPlugin(), "test-calibrated-plugin")
    return CalibratedUniform.name
