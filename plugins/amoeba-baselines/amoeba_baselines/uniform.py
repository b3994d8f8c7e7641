"""Uniform-width baselines: the host's uniform method with another metric."""
from amoeba_plugin.pruning.uniform import UniformWidthMethod


class WandaSPMethod(UniformWidthMethod):
    """Wanda-sp as FLAP's paper runs it: the same width in every layer, heads and MLP channels
    ranked by ``|W|·||X||`` on the o_proj / down_proj columns, no compensation."""

    name = "wanda-sp"
    description = "uniform width, heads/channels ranked by Wanda-sp |W|·||X|| (An et al. 2024); needs calibration"
    capabilities = frozenset({"width", "calibration"})
    default_options = {"metric": "wanda-sp", "keep_layers": []}


class RandomMethod(UniformWidthMethod):
    """The control: the same uniform shape, heads and channels drawn at random from the run's seed."""

    name = "random"
    description = "uniform width, heads/channels picked at random (seeded by --seed); the control"
    capabilities = frozenset({"width"})
    default_options = {"metric": "random", "keep_layers": []}
