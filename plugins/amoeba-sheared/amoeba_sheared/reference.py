"""Reference losses for dynamic batch loading: what each domain's loss should reach.

* ``source``: the held-out losses of the model before pruning (the paper's "source reference");
* ``scaling:FILE``: per-domain scaling laws ``L(N) = a / N^b + c`` fitted to losses the user measured
  on a family of models, evaluated at the pruned model's parameter count (the paper's main choice,
  fitted on LLaMA2 7B/13B/70B);
* ``model:PATH``: the held-out losses of another model;
* ``NAME=LOSS,...``: given values.

FILE is JSON: ``{"parameters": [N1, N2, ...], "losses": {"domain": [L1, L2, ...], ...}}``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from amoeba_plugin.errors import DataError

_FIX = "write --reference source, scaling:FILE.json, model:PATH or NAME=LOSS,... (one per domain)"


def fit_scaling_law(parameters, losses) -> tuple[float, float, float]:
    """Least-squares ``(a, b, c)`` of ``L(N) = a / N^b + c``: for a fixed ``b`` the fit is linear in
    ``(a, c)``; ``b`` is found by a grid over (0, 3] refined by golden-section search."""
    n = torch.tensor([float(p) for p in parameters], dtype=torch.float64)
    y = torch.tensor([float(v) for v in losses], dtype=torch.float64)
    if len(n) < 3 or len(n) != len(y) or bool((n <= 0).any()):
        raise DataError(f"a scaling-law fit needs at least 3 positive model sizes with one loss each "
                        f"(got {len(n)} sizes and {len(y)} losses)", "measure at least 3 models of the family")
    scale = float(n.max())  # fit in N / max(N) for conditioning; a is converted back below

    def solve(b):
        x = torch.stack([(n / scale) ** (-b), torch.ones_like(n)], 1)
        coef = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
        return float(((x @ coef - y) ** 2).sum()), coef

    grid = [3.0 * (i + 1) / 300 for i in range(300)]
    errors = [solve(b)[0] for b in grid]
    i = min(range(len(grid)), key=errors.__getitem__)
    lo, hi = grid[max(0, i - 1)] if i else 1e-6, grid[min(len(grid) - 1, i + 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if solve(m1)[0] < solve(m2)[0]:
            hi = m2
        else:
            lo = m1
    b = (lo + hi) / 2
    a_scaled, c = solve(b)[1].tolist()
    return a_scaled * scale ** b, b, c


def predict(fit: tuple[float, float, float], parameters: float) -> float:
    a, b, c = fit
    return a / float(parameters) ** b + c


def read_family(path) -> tuple[list[float], dict[str, list[float]]]:
    """``(sizes, {domain: losses})`` from a FILE of losses measured on a model family."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
        sizes, losses = [float(n) for n in data["parameters"]], {d: [float(v) for v in ls]
                                                                 for d, ls in data["losses"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"cannot read the scaling-law file {p} ({type(exc).__name__}: {exc})",
                        'write JSON {"parameters": [N1, N2, N3], "losses": {"DOMAIN": [L1, L2, L3]}}') from None
    return sizes, losses


def scaling_reference(path, domains: list[str], parameters: float) -> dict[str, float]:
    """Reference losses at ``parameters`` from a FILE of measured family losses."""
    p = Path(path).expanduser()
    sizes, losses = read_family(p)
    missing = [d for d in domains if d not in losses]
    if missing:
        raise DataError(f"the scaling-law file {p} has no losses for domain(s) {', '.join(missing)}",
                        "add them, or name the domains as the file does")
    return {d: predict(fit_scaling_law(sizes, losses[d]), parameters) for d in domains}


def parse_reference(text: str | None) -> tuple[str, object]:
    """``("source", None)``, ``("scaling", path)``, ``("model", path)`` or ``("values", {name: loss})``."""
    text = (text or "source").strip()
    if text == "source":
        return "source", None
    kind, sep, rest = text.partition(":")
    if sep and kind in ("scaling", "model") and rest:
        if kind == "scaling" and not Path(rest).expanduser().is_file():
            raise DataError(f"no scaling-law file at {rest}", _FIX)
        return kind, rest
    try:
        values = {k.strip(): float(v) for k, v in (p.split("=") for p in text.split(",") if p.strip())}
    except ValueError:
        raise DataError(f"cannot read the reference '{text}'", _FIX) from None
    if not values:
        raise DataError(f"cannot read the reference '{text}'", _FIX)
    return "values", values


def check_values(values: dict[str, float], domains: list[str]) -> dict[str, float]:
    if set(values) != set(domains):
        raise DataError(f"the reference names {sorted(values)} but the domains are {domains}",
                        "give one reference loss per domain, by domain name")
    return {d: float(values[d]) for d in domains}


__all__ = ["check_values", "fit_scaling_law", "parse_reference", "predict", "read_family", "scaling_reference"]
