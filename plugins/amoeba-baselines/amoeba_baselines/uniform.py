"""Uniform-width baselines: the host's uniform method with another metric."""
from dataclasses import dataclass

from amoeba_plugin.options import option_like
from amoeba_plugin.pruning.uniform import UniformWidthMethod, UniformWidthOptions


@dataclass
class WandaSPOptions(UniformWidthOptions):
    metric: str = option_like(UniformWidthOptions, "metric", "wanda-sp")


@dataclass
class RandomOptions(UniformWidthOptions):
    metric: str = option_like(UniformWidthOptions, "metric", "random")


class WandaSPMethod(UniformWidthMethod):
    """Wanda-sp as FLAP's paper runs it: the same width in every layer, heads and MLP channels
    ranked by ``|W|·||X||`` on the o_proj / down_proj columns, no compensation."""

    name = "wanda-sp"
    description = "uniform width, heads/channels ranked by Wanda-sp |W|·||X|| (An et al. 2024); needs calibration"
    capabilities = frozenset({"width", "calibration"})
    options_class = WandaSPOptions


class RandomMethod(UniformWidthMethod):
    """The control: the same uniform shape, heads and channels drawn at random from the run's seed."""

    name = "random"
    description = "uniform width, heads/channels picked at random (seeded by --seed); the control"
    capabilities = frozenset({"width"})
    options_class = RandomOptions
