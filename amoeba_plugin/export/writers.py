"""The built-in exporters.

* ``hf``: the family's stock transformers architecture only (loads without amoeba-plugin);
  :meth:`~HuggingFaceExporter.check` says why when the plan cannot be expressed that way.
* ``amoeba``: always the project's own per-layer architecture (loads after ``import amoeba_plugin``).
* ``auto``: stock when possible, else amoeba. The CLI's default.
* ``plan``: only ``plan.json`` and a short ``README.md``.

Model exports hold ``model.safetensors`` + ``config.json`` (+ ``generation_config.json``), the
tokenizer when one was given, ``plan.json``, a model card ``README.md`` and ``amoeba_export.json``
(exporter, amoeba-plugin version, summary). Weights keep the source dtype; a patch (compensation
biases, reformed weights) is folded in by slicing and also saved as ``amoeba_patch/patch.safetensors`` beside
``plan.json``, so the plan reproduces the export.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import PlanError
from ..plan import Plan
from ..surgery.physical import (
    _ATTN,
    _MLP,
    _layer_specs,
    build_config,
    slice_model,
    slice_state_dict,
)
from . import Exporter, ExportRequest
from .card import model_card
from .patch import save_patch

EXPORT_INFO = "amoeba_export.json"
_BIAS_MODULES = {"q": _ATTN["q"], "k": _ATTN["k"], "v": _ATTN["v"], "o": _ATTN["o"],
                 "gate": _MLP["gate"], "up": _MLP["up"], "down": _MLP["down"]}


class _ShapesOnly:
    """Stands in for a model in :func:`slice_state_dict`: the same state dict on the meta device, so
    the sliced names and shapes come out without copying a single weight."""

    def __init__(self, model):
        self._model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: torch.empty_like(v, device="meta") for k, v in self._model.state_dict().items()}


def sliced_shapes(model, anatomy, plan: Plan, patch: dict | None = None) -> dict[str, torch.Tensor]:
    """The sliced state dict as meta tensors (names, shapes and dtypes only)."""
    meta_patch = {k: torch.empty_like(v, device="meta") for k, v in (patch or {}).items()}
    return slice_state_dict(_ShapesOnly(model), anatomy, plan, meta_patch)


def _layers(indices: list[int]) -> str:
    return ("layer " if len(indices) == 1 else "layers ") + ", ".join(str(i) for i in indices)


def _keep(indices: list[int]) -> str:
    return "keeps" if len(indices) == 1 else "keep"


def stock_obstacle(model, anatomy, plan: Plan, patch: dict | None = None) -> str | None:
    """Why the family's stock config cannot express ``plan`` applied to ``model`` (one line), or None.

    Decided by :func:`build_config` itself (``prefer="stock"``) on a shapes-only slice, so this never
    disagrees with :func:`slice_model`; the reason is then diagnosed for the user.
    """
    model_type = getattr(model.config, "model_type", "?")
    if model_type == "amoeba":
        return ("the source model already uses the amoeba per-layer architecture, which has no stock "
                "transformers class")
    state = sliced_shapes(model, anatomy, plan, patch)
    try:
        build_config(model, anatomy, plan, state, prefer="stock")
        return None
    except PlanError:
        pass
    return _diagnose(model, anatomy, plan, state)


def _diagnose(model, anatomy, plan: Plan, state: dict) -> str:
    model_type = model.config.model_type
    if not plan.layers:
        return "the plan keeps no layer"
    shapes = plan.shape(anatomy)
    no_attn = [s["index"] for s in shapes if not s["kv_groups"]]
    no_mlp = [s["index"] for s in shapes if not s["intermediate_size"]]
    if no_attn:
        return f"{_layers(no_attn)} {_keep(no_attn)} no attention block, which {model_type} layers cannot omit"
    if no_mlp:
        return f"{_layers(no_mlp)} {_keep(no_mlp)} no MLP block, which {model_type} layers cannot omit"
    distinct: dict[tuple, list[int]] = {}
    for s in shapes:
        distinct.setdefault((s["query_heads"], s["kv_groups"], s["head_dim"], s["intermediate_size"]),
                            []).append(s["index"])
    if len(distinct) > 1:
        parts = [f"{_layers(idx)}: {q} query heads, {kv} KV groups, head_dim {hd}, MLP width {m}"
                 for (q, kv, hd, m), idx in list(distinct.items())[:3]]
        more = f"; and {len(distinct) - 3} more shapes" if len(distinct) > 3 else ""
        return f"the kept layers differ in shape ({'; '.join(parts)}{more}), and a {model_type} config has one shape for all layers"
    specs = _layer_specs(model, anatomy, plan, state)
    channels = [lp.index for spec, lp in zip(specs, plan.layers) if spec["head_channels"] is not None]
    if channels:
        return f"it prunes channels inside attention heads ({_layers(channels)}), which stock RoPE attention cannot express"
    added, partial = [], []
    for role, module in _BIAS_MODULES.items():
        present = [n for n in range(len(plan.layers)) if f"model.layers.{n}.{module}.bias" in state]
        if present and role not in anatomy.biases:
            added.append(f"{role}_proj")
        elif present and len(present) < len(plan.layers):
            partial.append(f"{role}_proj")
    if added or partial:
        why = " (the plan has output_bias=True)" if plan.output_bias else " (from the method's patch)"
        what = []
        if added:
            what.append(f"adds {', '.join(added)} bias{'es' if len(added) > 1 else ''} that {model_type} does not have")
        if partial:
            what.append(f"has {', '.join(partial)} biases in only some layers")
        return f"it {' and '.join(what)}{why}"
    s = shapes[0]
    hidden = anatomy.hidden_size if plan.hidden_channels is None else len(plan.hidden_channels)
    why = (f": the hidden size {hidden} is not a multiple of {s['query_heads']} query heads"
           if s["query_heads"] and hidden % s["query_heads"] else "")
    return (f"{type(model.config).__name__} rejects the sliced shape ({s['query_heads']} query heads, "
            f"{s['kv_groups']} KV heads, head_dim {s['head_dim']}, MLP width {s['intermediate_size']}, "
            f"hidden size {hidden}){why}")


def _reuse(request: ExportRequest, target: str):
    """``request.sliced`` when it already has the architecture ``target`` ("stock" or "amoeba")."""
    sliced = request.sliced
    if sliced is None or getattr(sliced, "config", None) is None:
        return None
    is_amoeba = sliced.config.model_type == "amoeba"
    return sliced if is_amoeba == (target == "amoeba") else None


def sliced_for(request: ExportRequest, target: str):
    """The model to write: ``request.sliced`` if it fits ``target``, else a fresh slice (patch included)."""
    model = _reuse(request, target)
    if model is None:
        model = slice_model(request.model, request.anatomy, request.plan, patch=request.patch,
                            prefer="stock" if target == "stock" else "amoeba")
    return model


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def export_info(request: ExportRequest, exporter_name: str, model=None) -> dict:
    """The content of ``amoeba_export.json``."""
    from .. import __version__

    anatomy, plan = request.anatomy, request.plan
    full = Plan.full(anatomy)
    summary = plan.summary(anatomy)
    summary.update(parameters_before=full.num_parameters(anatomy),
                   non_embedding_parameters_before=full.num_parameters(anatomy, embeddings=False),
                   macs_per_token_before=full.macs_per_token(anatomy), shape=plan.shape(anatomy),
                   dropped_layers=[i for i in range(anatomy.num_layers) if i not in {lp.index for lp in plan.layers}])
    out = {"format": "amoeba-export", "exporter": exporter_name, "amoeba_plugin_version": __version__,
           "source_model": (request.info or {}).get("source_model"), "source": plan.source,
           "summary": summary}
    if model is not None:
        out.update(architecture="amoeba" if model.config.model_type == "amoeba" else "stock",
                   model_type=model.config.model_type, model_class=type(model).__name__,
                   dtype=str(export_dtype(request)).removeprefix("torch."),
                   patched_tensors=sorted(request.patch or {}))
    info = {k: v for k, v in (request.info or {}).items() if k != "summary"}
    if info:
        out["info"] = info
    return _jsonable(out)


DTYPES = ("float32", "float16", "bfloat16")


def export_dtype(request: ExportRequest) -> torch.dtype:
    """The dtype an export is written in: ``request.dtype``, else the source checkpoint's stored dtype
    (a float16 source gives a float16 export although it was pruned in float32)."""
    from ..models import stored_dtype

    name = request.dtype or stored_dtype(request.model)
    if name not in DTYPES:
        raise PlanError(f"unknown export dtype '{name}'", f"use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors of ``state`` in ``dtype``; tensors that share storage (tied weights) stay shared."""
    cast: dict[int, torch.Tensor] = {}
    return {k: cast.setdefault(v.data_ptr(), v.to(dtype)) if v.is_floating_point() else v for k, v in state.items()}


def write_model(request: ExportRequest, model, directory: Path, exporter_name: str) -> None:
    """Write ``model`` (in :func:`export_dtype`) and its companions into ``directory`` (which the atomic
    writer owns). The caller's model is not cast: a cast copy of its state is written."""
    directory = Path(directory)
    dtype = export_dtype(request)
    current = next(model.parameters()).dtype
    if current == dtype:
        model.save_pretrained(directory)
    else:  # save_pretrained records the parameters' dtype in config.json: state the written one instead
        model.save_pretrained(directory, state_dict=cast_state(model.state_dict(), dtype))
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        config["dtype"] = str(dtype).removeprefix("torch.")
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if request.tokenizer is not None:
        request.tokenizer.save_pretrained(directory)
    request.plan.save(directory / "plan.json")
    save_patch(request.patch, directory)
    (directory / "README.md").write_text(model_card(request, exporter_name, model), encoding="utf-8")
    (directory / EXPORT_INFO).write_text(json.dumps(export_info(request, exporter_name, model), indent=1) + "\n",
                                         encoding="utf-8")


class HuggingFaceExporter(Exporter):
    name = "hf"
    description = ("the family's stock transformers architecture (loads without amoeba-plugin); "
                   "uniform plans with whole heads and no added biases only")

    def check(self, request: ExportRequest) -> str | None:
        return stock_obstacle(request.model, request.anatomy, request.plan, request.patch)

    def write(self, request: ExportRequest, directory: Path) -> None:
        write_model(request, sliced_for(request, "stock"), directory, self.name)


class AmoebaExporter(Exporter):
    name = "amoeba"
    description = "the amoeba per-layer architecture (any plan; load after `import amoeba_plugin`)"

    def write(self, request: ExportRequest, directory: Path) -> None:
        write_model(request, sliced_for(request, "amoeba"), directory, self.name)


class AutoExporter(Exporter):
    name = "auto"
    description = "stock architecture when the plan allows it, else the amoeba architecture (default)"

    def write(self, request: ExportRequest, directory: Path) -> None:
        target = "stock" if stock_obstacle(request.model, request.anatomy, request.plan, request.patch) is None \
            else "amoeba"
        write_model(request, sliced_for(request, target), directory, self.name)


class PlanExporter(Exporter):
    name = "plan"
    description = "only plan.json (and a README); apply it later with `amoeba export MODEL --plan DIR`"

    def write(self, request: ExportRequest, directory: Path) -> None:
        directory = Path(directory)
        request.plan.save(directory / "plan.json")
        save_patch(request.patch, directory)
        (directory / "README.md").write_text(model_card(request, self.name, None), encoding="utf-8")


EXPORTERS = (HuggingFaceExporter, AmoebaExporter, AutoExporter, PlanExporter)

__all__ = [
    "DTYPES",
    "EXPORTERS",
    "EXPORT_INFO",
    "AmoebaExporter",
    "AutoExporter",
    "HuggingFaceExporter",
    "PlanExporter",
    "cast_state",
    "export_dtype",
    "export_info",
    "sliced_for",
    "sliced_shapes",
    "stock_obstacle",
    "write_model",
]
