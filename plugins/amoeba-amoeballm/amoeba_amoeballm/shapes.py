"""Subnet shapes and the selection table: what stage 1 decided, and how a (depth, width) becomes a plan.

A shape is a depth (layers kept, whose mask comes from the DP table: masks are not nested across
depths) and a width ratio (whose nested mask and compensation biases come from the width
selection, computed once at full depth and reused at every depth, as the official code does).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plan import Plan, source_info
from amoeba_plugin.surgery import apply_soft

from .depth import DepthTable
from .smol import shape_encoding


@dataclass(frozen=True, order=True)
class Shape:
    """``depth`` decoder layers at ``width`` (fraction of decoder-linear parameters per layer set)."""

    depth: int
    width: float

    def __str__(self) -> str:
        return f"{self.depth}x{self.width:g}"

    @classmethod
    def parse(cls, text: str | Shape) -> Shape:
        """``"6x0.75"``, ``"6:0.75"`` or ``"6,0.75"``."""
        if isinstance(text, Shape):
            return text
        m = re.fullmatch(r"\s*(\d+)\s*[x:,]\s*([0-9.]+)\s*", str(text))
        if not m:
            raise AmoebaError(f"cannot read the shape '{text}'", "write DEPTHxWIDTH, e.g. 6x0.75 (6 layers, width 0.75)")
        return cls(int(m.group(1)), float(m.group(2)))


@dataclass
class SelectionTable:
    """Stage 1's result: the DP depth table, the width list, full-depth width plans and biases."""

    depth: DepthTable
    widths: list[float]
    width_plans: dict[float, Plan]
    biases: dict[float, dict[str, torch.Tensor]]
    allocation: str = "global"
    #: the width ranking the masks were cut from (:class:`.width.WidthRanking`), in memory after a
    #: selection run only: the ``amoeballm`` method fills its budget from it
    ranking: object = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ the design space
    def shapes(self) -> list[Shape]:
        """Every (depth, width), largest first."""
        return [Shape(d, w) for d in self.depth.depths() for w in self.widths]

    @property
    def largest(self) -> Shape:
        return Shape(self.depth.num_layers, self.widths[0])

    @property
    def smallest(self) -> Shape:
        return Shape(min(self.depth.depths()), self.widths[-1])

    def check(self, shape: Shape) -> Shape:
        if shape.width not in self.widths:
            raise AmoebaError(f"width {shape.width:g} is not in this bundle's width list "
                              f"{', '.join(f'{w:g}' for w in self.widths)}", "pick one of those widths")
        if shape.depth not in self.depth.depths():
            depths = self.depth.depths()
            raise AmoebaError(f"depth {shape.depth} is not available (this bundle has {min(depths)} to "
                              f"{max(depths)} layers)", "pick a depth in that range")
        return shape

    # ------------------------------------------------------------------ a shape as a plan
    def plan(self, shape: Shape, anatomy) -> Plan:
        """The shape's plan on the source model: the width plan restricted to the depth's layers."""
        shape = self.check(shape)
        kept = set(self.depth.kept_layers(shape.depth))
        wide = self.width_plans[shape.width]
        plan = Plan([lp for lp in wide.layers if lp.index in kept], source=source_info(anatomy),
                    output_bias=wide.output_bias and bool(self.biases.get(shape.width)),
                    provenance={**wide.provenance, "method": "amoeballm", "shape": str(shape),
                                "depth": shape.depth, "layers": sorted(kept)})
        return plan.validate(anatomy)

    def patch(self, shape: Shape, anatomy) -> dict[str, torch.Tensor]:
        """The compensation biases of the shape's kept layers."""
        kept = {anatomy.layer(i).modules[r] for i in self.depth.kept_layers(shape.depth) for r in ("o", "down")
                if r in anatomy.layer(i).modules}
        return {k: v for k, v in self.biases.get(shape.width, {}).items() if k.rsplit(".", 1)[0] in kept}

    def encoding(self, shape: Shape) -> torch.Tensor:
        """The router's input: the layer mask (1 = kept) followed by the width's one-hot."""
        shape = self.check(shape)
        kept = set(self.depth.kept_layers(shape.depth))
        mask = [float(i in kept) for i in range(self.depth.num_layers)]
        return shape_encoding(mask, self.widths.index(shape.width), len(self.widths))

    @property
    def encoding_dim(self) -> int:
        return self.depth.num_layers + len(self.widths)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-safe; the biases (tensors) travel separately (see :meth:`bias_tensors`)."""
        return {"depth": self.depth.to_dict(), "widths": self.widths, "allocation": self.allocation,
                "width_plans": {f"{w:g}": p.to_dict() for w, p in self.width_plans.items()}}

    def bias_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{w:g}/{name}": t.contiguous() for w, named in self.biases.items() for name, t in named.items()}

    @classmethod
    def from_dict(cls, data: dict, tensors: dict[str, torch.Tensor]) -> SelectionTable:
        widths = [float(w) for w in data["widths"]]
        plans = {float(w): Plan.from_dict(p) for w, p in data["width_plans"].items()}
        biases: dict[float, dict[str, torch.Tensor]] = {w: {} for w in widths}
        for key, t in tensors.items():
            w, _, name = key.partition("/")
            biases.setdefault(float(w), {})[name] = t
        return cls(DepthTable.from_dict(data["depth"]), widths, plans, biases, data.get("allocation", "global"))


def apply_shape(model, anatomy, table: SelectionTable, shape: Shape):
    """Make ``model`` (the base, possibly wrapped by peft in place) compute the shape's subnet:
    layers skipped, heads and channels masked, compensation biases added to o/down outputs. The
    masked forward equals the extracted model's (tested); leaving the ``with`` block undoes it."""
    return apply_soft(model, anatomy, table.plan(shape, anatomy), patch=table.patch(shape, anatomy))


__all__ = ["SelectionTable", "Shape", "apply_shape"]
