"""Method options per model for the leaderboard (``python -m benchmarks.leaderboard``).

One entry per (model, method): the options that method runs with on that model, sized so that one
training-free run at one budget takes at most about ten minutes on SmolLM2-135M on the 2-core
development machine. An empty entry means the method's own defaults, which is what every method
uses unless a measurement says they do not fit. ``--method-options`` on the command line still wins
over a preset, and ``--no-presets`` runs every method on its defaults.

The backends' entries (searchllm, amoeballm, sheared) are theirs to fill: their helpers size the
defaults to fit, so empty is right until a measurement says otherwise. A third-party method not
listed here runs on its defaults.
"""
from __future__ import annotations

#: model name (as given to ``--model``) -> method name -> options. The baselines (uniform-magnitude,
#: random, wanda-sp, flap, shortgpt) run on their defaults: seconds on the tiny model, well under a
#: minute per budget on SmolLM2-135M (32 calibration windows of 256 tokens).
PRESETS: dict[str, dict[str, dict]] = {
    "amoeba-tiny-sotu": {
        # backends: chosen by the backend helpers; their defaults are sized to fit
        "searchllm": {},
        "amoeballm": {},
        "sheared": {},
    },
    "smollm2-135m": {
        # backends: chosen by the backend helpers, at most about ten minutes per budget here
        "searchllm": {},
        "amoeballm": {},
        "sheared": {},
    },
}


def preset(model: str, method: str) -> dict:
    """The leaderboard's options for ``method`` on ``model`` (a copy; empty: the method's defaults)."""
    return dict(PRESETS.get(model, {}).get(method, {}))
