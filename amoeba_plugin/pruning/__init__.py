"""The host's own pruning pieces: building blocks that methods compose, plus the built-in uniform method.

* :mod:`~amoeba_plugin.pruning.allocation`: from scores and a Budget to a Plan (uniform shapes, FLAP's
  global ranking across layers, the budget-too-small error);
* :mod:`~amoeba_plugin.pruning.compensation`: FLAP's bias compensation (removed channels leave their
  mean contribution behind as an output bias);
* :mod:`~amoeba_plugin.pruning.reformation`: least-squares refit of the kept columns of o_proj /
  down_proj (Search for Efficient LLMs), on inputs from a :func:`~amoeba_plugin.calibration.layer_pass`;
* :mod:`~amoeba_plugin.pruning.uniform`: :class:`UniformWidthMethod`, the built-in ``uniform-magnitude``
  method, which plugins subclass with another metric.

Plugins import these modules (they are public); the package itself imports none of them, so each
costs only what it needs.
"""
