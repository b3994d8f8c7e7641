"""AmoebaLLM's depth stage: the dynamic program that picks which layers to drop for every depth.

The recurrence is the official code's (see the research notes, section 2.1). With ``L`` layers, the last
``K`` never removable, ``N = L - K`` removable layers and at most ``M = L - min_layers`` removed:

* layers are decided top-down: step ``n`` (1..N) decides layer ``N - n``;
* ``D[n][m]`` / ``S[n][m]``: the best score / mask after deciding the top ``n`` removable layers with
  exactly ``m`` of them removed (all lower layers kept);
* one candidate per cell: ``S[n-1][m-1]`` with layer ``N - n`` also removed, evaluated on the whole
  network; it replaces ``D[n-1][m]`` (keeping that layer) only when strictly better.

That is ``M(M+1)/2 + (N-M)M`` subnet evaluations (306 for 32 layers, 20 minimum, keep 1). The result is
exact for a score additive over layers, a heuristic otherwise; its masks need not be nested across
depths (the official LLaMA-2 run removes layer 16 at m=8 but not at m=9), so a full mask is stored per
depth rather than one ranking.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.progress import progress, report

FORMAT = "amoeballm-depth-table"
VERSION = 1
STAGE = "amoeballm depth DP"


@dataclass
class DepthTable:
    """The DP's answer: per number of removed layers ``m`` (0..M) a 0/1 mask over all layers and its score."""

    num_layers: int
    keep_last: int
    min_layers: int
    higher_is_better: bool
    #: m -> 0/1 per layer (length num_layers); m = 0 is all ones
    masks: dict[int, list[int]]
    #: m -> D[N][m] for m >= 1; m = 0 only when the full model's score was measured
    scores: dict[int, float]
    evaluations: int = 0
    eval_seconds: list[float] = field(default_factory=list)
    #: what scored the subnets (name and options), for the record
    scorer: dict[str, Any] = field(default_factory=dict)

    def depths(self) -> list[int]:
        """Available depths (layers kept), deepest first."""
        return sorted((self.num_layers - m for m in self.masks), reverse=True)

    def kept_layers(self, depth: int) -> list[int]:
        """Indices of the layers kept at ``depth`` layers."""
        m = self.num_layers - depth if isinstance(depth, int) and not isinstance(depth, bool) else None
        if m not in self.masks:
            raise AmoebaError(f"depth {depth!r} is not in this depth table (available: "
                              f"{', '.join(map(str, self.depths()))} layers)",
                              f"pick one of those depths, or rerun the DP with min_layers <= {depth}")
        return [i for i, keep in enumerate(self.masks[m]) if keep]

    def removed_layers(self, depth: int) -> list[int]:
        """Indices of the layers dropped at ``depth`` layers."""
        kept = set(self.kept_layers(depth))
        return [i for i in range(self.num_layers) if i not in kept]

    def to_dict(self) -> dict:
        """JSON-safe (string keys, non-finite scores as strings); :meth:`from_dict` restores it."""
        return {"format": FORMAT, "version": VERSION, "num_layers": self.num_layers, "keep_last": self.keep_last,
                "min_layers": self.min_layers, "higher_is_better": self.higher_is_better,
                "masks": {str(m): list(mask) for m, mask in sorted(self.masks.items())},
                "scores": {str(m): _dump_float(s) for m, s in sorted(self.scores.items())},
                "evaluations": self.evaluations, "eval_seconds": [float(s) for s in self.eval_seconds],
                "scorer": dict(self.scorer)}

    @classmethod
    def from_dict(cls, data: dict) -> DepthTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise AmoebaError("this is not an AmoebaLLM depth table (its 'format' is not "
                              f"'{FORMAT}')", "pass a depth table written by DepthTable.to_dict")
        if data.get("version", 0) > VERSION:
            raise AmoebaError(f"depth table version {data['version']} is newer than this plugin understands "
                              f"({VERSION})", "upgrade amoeba-amoeballm")
        try:
            table = cls(num_layers=int(data["num_layers"]), keep_last=int(data["keep_last"]),
                        min_layers=int(data["min_layers"]), higher_is_better=bool(data["higher_is_better"]),
                        masks={int(m): [int(v) for v in mask] for m, mask in data["masks"].items()},
                        scores={int(m): float(s) for m, s in data["scores"].items()},
                        evaluations=int(data.get("evaluations", 0)),
                        eval_seconds=[float(s) for s in data.get("eval_seconds", [])],
                        scorer=dict(data.get("scorer") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise AmoebaError(f"malformed depth table ({type(exc).__name__}: {exc})",
                              "regenerate it with dp_layer_selection") from None
        bad = [m for m, mask in table.masks.items()
               if len(mask) != table.num_layers or table.num_layers - sum(mask) != m]
        if bad:
            raise AmoebaError(f"depth table mask for m={bad[0]} does not remove exactly {bad[0]} of "
                              f"{table.num_layers} layers", "regenerate it with dp_layer_selection")
        return table


def _dump_float(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def expected_evaluations(num_removable: int, max_removed: int) -> int:
    """Subnet evaluations the DP makes: ``sum_{n=1..N} min(n, M) = M(M+1)/2 + (N-M)M``."""
    for name, value in (("num_removable", num_removable), ("max_removed", max_removed)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise AmoebaError(f"{name} must be a non-negative integer, got {value!r}", "pass a count of layers")
    if max_removed > num_removable:
        raise AmoebaError(f"cannot remove {max_removed} layers when only {num_removable} are removable",
                          "lower max_removed (raise min_layers) or keep fewer last layers")
    n, m = num_removable, max_removed
    return m * (m + 1) // 2 + (n - m) * m


def _check_arguments(num_layers, min_layers, keep_last) -> None:
    for name, value in (("num_layers", num_layers), ("min_layers", min_layers), ("keep_last", keep_last)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise AmoebaError(f"{name} must be an integer, got {value!r}", f"pass {name} as a whole number")
    if num_layers < 1:
        raise AmoebaError(f"the model must have at least one layer, got num_layers={num_layers}",
                          "pass the number of decoder layers")
    if not 0 <= keep_last <= num_layers:
        raise AmoebaError(f"keep_last={keep_last} must be between 0 and the {num_layers} layers",
                          "keep_last counts the final layers that are never removed (the official default is 1)")
    if not 1 <= min_layers <= num_layers:
        raise AmoebaError(f"min_layers={min_layers} must be between 1 and the {num_layers} layers",
                          f"pass the smallest depth you want, e.g. min_layers={max(1, (num_layers * 5) // 8)}")
    if min_layers < keep_last:
        raise AmoebaError(f"min_layers={min_layers} is below keep_last={keep_last}: the last {keep_last} layers "
                          "are always kept, so no subnet can be that shallow",
                          f"raise min_layers to at least {keep_last} or lower keep_last")


def dp_layer_selection(num_layers: int, evaluate: Callable[[list[int]], float], *, min_layers: int,
                       keep_last: int = 1, higher_is_better: bool = False, show_progress: bool = True
                       ) -> DepthTable:
    """Run the DP. ``evaluate(kept_layer_indices) -> score`` scores one subnet (lower is better unless
    ``higher_is_better``). Returns a :class:`DepthTable` with a mask for every depth from ``num_layers``
    down to ``min_layers``."""
    _check_arguments(num_layers, min_layers, keep_last)
    if not callable(evaluate):
        raise AmoebaError(f"evaluate must be a callable taking the kept layer indices, got {type(evaluate).__name__}",
                          "pass e.g. lambda kept: scorer(model, anatomy, kept)")
    L, K = num_layers, keep_last
    N, M = L - K, L - min_layers
    total = expected_evaluations(N, M)
    full = [1] * L
    worst = -math.inf if higher_is_better else math.inf

    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    cells = [(n, m) for n in range(1, N + 1) for m in range(1, min(n, M) + 1)]
    steps = progress(cells, STAGE, total, f"{L} layers down to {min_layers}") if show_progress else cells
    prev_S: dict[int, list[int]] = {0: full}
    prev_D: dict[int, float] = {}
    cur_S: dict[int, list[int]] = {0: full}
    cur_D: dict[int, float] = {}
    row, seconds = 0, []
    for step, (n, m) in enumerate(steps, 1):
        if n != row:  # a new row: the finished one becomes n-1
            if row:
                prev_S, prev_D = cur_S, cur_D
            cur_S, cur_D, row = {0: full}, {}, n
        cand = list(prev_S[m - 1])
        cand[N - n] = 0
        kept = [i for i, keep in enumerate(cand) if keep]
        start = time.perf_counter()
        raw = evaluate(kept)
        seconds.append(time.perf_counter() - start)
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise AmoebaError(f"evaluate returned {type(raw).__name__} for layers {kept}, not a number",
                              "make the scorer return a float") from None
        if math.isnan(score):
            raise AmoebaError(f"evaluate returned NaN for the subnet keeping layers {kept}",
                              "check the scorer (a NaN loss usually means overflow in low precision; use float32)")
        keep = prev_D.get(m, worst) if m <= n - 1 else worst
        if m > n - 1 or better(score, keep):  # with m == n every decided layer is removed: no other option
            cur_S[m], cur_D[m] = cand, score
        else:
            cur_S[m], cur_D[m] = prev_S[m], keep
        if not show_progress:
            report(STAGE, step, total)
    if len(seconds) != total:  # the recurrence above is wrong, not the caller
        raise RuntimeError(f"the DP made {len(seconds)} evaluations, expected {total}")
    return DepthTable(num_layers=L, keep_last=K, min_layers=min_layers, higher_is_better=bool(higher_is_better),
                      masks={m: list(cur_S[m]) for m in range(M + 1)},
                      scores={m: cur_D[m] for m in range(1, M + 1)},
                      evaluations=len(seconds), eval_seconds=seconds)


__all__ = ["DepthTable", "dp_layer_selection", "expected_evaluations"]
