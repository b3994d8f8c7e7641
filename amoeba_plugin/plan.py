"""Plans: plain, JSON-serialisable descriptions of a subnet.

A plan lists the *kept* units, by index into the source model (the model the plan was made for):
the kept layers, and per kept layer the kept KV groups, the kept query heads inside each kept group,
optionally the kept channels inside the heads (RoPE pairs only; one list for every head, or one list
per kept KV group, shared by the group's K/V head and its query heads), and the kept MLP channels;
optionally the kept hidden channels. A layer whose ``kv_groups`` is empty has no attention; one
whose ``mlp_channels`` is empty has no MLP. ``None`` always means "all of them".
"""
from __future__ import annotations

import json
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .anatomy import Anatomy, LayerAnatomy
from .errors import PlanError

FORMAT = "amoeba-plan"
#: 2 added per-KV-group head channels; a plan without them is still written as version 1
VERSION = 2


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy integers too


def _int_list(value) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


#: each LayerPlan field and the JSON shapes it may take (checked when a plan is read)
_LAYER_SHAPES = {
    "kv_groups": ("a list of whole numbers, or null", _int_list),
    "query_heads": ("a list of lists of whole numbers, or null",
                    lambda v: isinstance(v, list) and all(_int_list(q) for q in v)),
    "head_channels": ("a list of whole numbers (or of such lists), or null",
                      lambda v: _int_list(v) or (isinstance(v, list) and all(_int_list(c) for c in v))),
    "mlp_channels": ("a list of whole numbers, or null", _int_list),
}


def _check_layer(layer, number: int) -> None:
    """A plan's layer entry as read from JSON: known keys, an integer index, lists of integers."""
    if not isinstance(layer, dict):
        raise PlanError(f"plan layer entry {number} is {_kind(layer)}, not an object", "regenerate the plan")
    unknown = sorted(set(layer) - {"index", *_LAYER_SHAPES})
    if unknown:
        raise PlanError(f"malformed plan layer entry {number}: unknown keys {unknown}",
                        f"use only index, {', '.join(_LAYER_SHAPES)}")
    if not _is_int(layer.get("index")):
        raise PlanError(f"plan layer entry {number} has index {layer.get('index')!r}, not a whole number",
                        f"write the layer's index as a number, e.g. \"index\": {number}")
    for key, (shape, ok) in _LAYER_SHAPES.items():
        value = layer.get(key)
        if value is not None and not ok(value):
            raise PlanError(f"plan layer {layer['index']}: {key} is {_kind(value)} {json.dumps(value)[:40]}, "
                            f"not {shape}", f"write {key} as {shape}")


@dataclass
class LayerPlan:
    """What survives of one source layer."""

    index: int
    kv_groups: list[int] | None = None
    #: per kept KV group, the kept query heads (indices inside the group); equal lengths (GQA)
    query_heads: list[list[int]] | None = None
    #: kept channels inside the heads (indices into head_dim), keeping RoPE pairs j, j + head_dim/2:
    #: one list for every head, or a list of lists, one per kept KV group (its K/V head and queries)
    head_channels: list[int] | list[list[int]] | None = None
    mlp_channels: list[int] | None = None

    @property
    def per_group_channels(self) -> bool:
        """True when ``head_channels`` holds one list per kept KV group."""
        return bool(self.head_channels) and isinstance(self.head_channels[0], list)

    def resolved(self, layer: LayerAnatomy) -> LayerPlan:
        """The same plan with every ``None`` expanded to explicit indices."""
        groups = list(range(layer.num_kv_groups)) if self.kv_groups is None else list(self.kv_groups)
        if self.query_heads is None:
            queries = [list(range(layer.queries_per_group)) for _ in groups]
        else:
            queries = [list(q) for q in self.query_heads]
        if self.head_channels is None:
            if layer.group_head_dims is not None:
                channels = [list(range(layer.group_head_dims[g])) for g in groups]
            else:
                channels = list(range(layer.head_dim))
        elif self.per_group_channels:
            channels = [list(c) for c in self.head_channels]
        else:
            channels = list(self.head_channels)
        mlp = list(range(layer.intermediate_size)) if self.mlp_channels is None else list(self.mlp_channels)
        return LayerPlan(self.index, groups, queries, channels, mlp)

    def group_channels(self) -> list[list[int]]:
        """Of a resolved plan: the kept head channels of each kept KV group, one list per group."""
        if self.per_group_channels:
            return [list(c) for c in self.head_channels]
        return [list(self.head_channels) for _ in self.kv_groups]

    def widths(self) -> tuple[int, int]:
        """Of a resolved plan: the rows kept in q_proj (= o_proj columns) and in k_proj (= v_proj)."""
        channels = self.group_channels()
        return (sum(len(q) * len(c) for q, c in zip(self.query_heads, channels)), sum(len(c) for c in channels))


@dataclass
class Plan:
    """A subnet of a source model. See the module docstring for the meaning of each field."""

    layers: list[LayerPlan]
    source: dict[str, Any] = field(default_factory=dict)
    hidden_channels: list[int] | None = None
    #: o_proj and down_proj of every kept layer carry an output bias (bias compensation, FLAP-style)
    output_bias: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def full(cls, anatomy: Anatomy, **provenance) -> Plan:
        """The identity plan: every unit of ``anatomy`` kept."""
        return cls(layers=[LayerPlan(l.index) for l in anatomy.layers], source=source_info(anatomy),
                   provenance=dict(provenance))

    def resolved(self, anatomy: Anatomy) -> Plan:
        return Plan([lp.resolved(anatomy.layer(lp.index)) for lp in self.layers], dict(self.source),
                    list(range(anatomy.hidden_size)) if self.hidden_channels is None else list(self.hidden_channels),
                    self.output_bias, dict(self.provenance))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        version = VERSION if any(lp.per_group_channels for lp in self.layers) else 1
        return {"format": FORMAT, "version": version, "source": self.source,
                "layers": [asdict(l) for l in self.layers], "hidden_channels": self.hidden_channels,
                "output_bias": self.output_bias, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PlanError("this JSON is not an amoeba plan (its 'format' is not 'amoeba-plan')",
                            "pass a plan.json written by amoeba (prune or export)")
        version = data.get("version", 0)
        if not _is_int(version):
            raise PlanError(f"the plan's version is {version!r}, not a whole number",
                            f"write \"version\": {VERSION} (or regenerate the plan with amoeba prune)")
        if version > VERSION:
            raise PlanError(f"plan format version {data['version']} is newer than this amoeba-plugin "
                            f"understands ({VERSION})", "upgrade amoeba-plugin")
        for key in ("source", "provenance"):
            if not isinstance(data.get(key) or {}, dict):
                raise PlanError(f"the plan's '{key}' is {_kind(data[key])}, not an object",
                                f"write '{key}' as a JSON object (or regenerate the plan)")
        if not isinstance(data.get("layers"), list):
            raise PlanError("the plan has no 'layers' list", "regenerate the plan")
        layers = []
        for number, layer in enumerate(data["layers"]):
            _check_layer(layer, number)
            layers.append(LayerPlan(**layer))
        hidden = data.get("hidden_channels")
        if hidden is not None and not _int_list(hidden):
            raise PlanError(f"the plan's hidden_channels is {_kind(hidden)}, not a list of whole numbers",
                            "write hidden_channels as a list of channel indices, or null for all")
        output_bias = data.get("output_bias", False)
        if isinstance(output_bias, str) or output_bias not in (True, False):  # numpy's bool is fine too
            raise PlanError(f"the plan's output_bias is {output_bias!r}, not true or false", "write true or false")
        return cls(layers=layers, source=data.get("source") or {}, hidden_channels=hidden,
                   output_bias=bool(output_bias), provenance=data.get("provenance") or {})

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"the plan is not valid JSON ({exc})", "pass a plan.json written by amoeba") from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        if not path.exists():
            raise PlanError(f"no plan at {path}", "pass the path of a plan.json or of an export directory")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PlanError(f"{path} is not a plan: it is not text (a binary file?)",
                            "pass a plan.json written by amoeba (prune or export)") from None
        except OSError as exc:
            raise PlanError(f"cannot read the plan {path} ({exc.strerror or exc})", "check the path and its permissions") from None
        try:
            return cls.from_json(text)
        except PlanError as exc:
            raise PlanError(f"{path}: {exc.problem}", exc.fix) from None

    # ------------------------------------------------------------------ validation
    def validate(self, anatomy: Anatomy, *, check_source: bool = True) -> Plan:
        """Raise :class:`PlanError` if this plan cannot be applied to ``anatomy``; return self."""
        if check_source and self.source:
            want = self.source.get("fingerprint", "")
            if want and want.split("-")[0] != anatomy.shape_signature():
                raise PlanError(
                    f"this plan was made for another model ({self.source.get('model_type')} with "
                    f"{self.source.get('num_layers')} layers and hidden size {self.source.get('hidden_size')}; "
                    f"this one is {anatomy.model_type} with {anatomy.num_layers} layers and hidden size "
                    f"{anatomy.hidden_size})", "apply it to the model it was made for, or make a new plan")
        seen = [l.index for l in self.layers]
        if seen != sorted(set(seen)):
            raise PlanError(f"layer indices must be unique and ascending, got {seen}", "sort and de-duplicate them")
        for lp in self.layers:
            if not 0 <= lp.index < anatomy.num_layers:
                raise PlanError(f"layer {lp.index} does not exist (the model has {anatomy.num_layers})",
                                "use indices from 0 to num_layers - 1")
            _validate_layer(lp, anatomy)
        if self.hidden_channels is not None:
            _check_indices(self.hidden_channels, anatomy.hidden_size, "hidden channels", allow_empty=False)
        return self

    # ------------------------------------------------------------------ accounting
    def shape(self, anatomy: Anatomy) -> list[dict]:
        """Per kept layer: query heads, KV groups, head_dim (the widest group's, when groups keep
        different channels), intermediate size, and the kept rows of q_proj and of k_proj."""
        out = []
        for lp in self.layers:
            r = lp.resolved(anatomy.layer(lp.index))
            q_width, kv_width = r.widths() if r.kv_groups else (0, 0)
            out.append({"index": lp.index, "query_heads": sum(len(q) for q in r.query_heads),
                        "kv_groups": len(r.kv_groups),
                        "head_dim": max(len(c) for c in r.group_channels()) if r.kv_groups else 0,
                        "intermediate_size": len(r.mlp_channels), "q_width": q_width, "kv_width": kv_width})
        return out

    def is_uniform(self, anatomy: Anatomy) -> bool:
        """True when every kept layer has the same shape and keeps both attention and MLP."""
        shapes = {(s["query_heads"], s["kv_groups"], s["head_dim"], s["intermediate_size"], s["q_width"])
                  for s in self.shape(anatomy)}
        return len(shapes) <= 1 and all(s[1] > 0 and s[3] > 0 for s in shapes)

    def num_parameters(self, anatomy: Anatomy, *, embeddings: bool = True) -> int:
        """Parameters of the sliced model (exact; includes norms and biases)."""
        hidden = anatomy.hidden_size if self.hidden_channels is None else len(self.hidden_channels)
        total = hidden  # final norm
        for s, lp in zip(self.shape(anatomy), self.layers):
            layer = anatomy.layer(lp.index)
            nkv, hd, inter = s["kv_groups"], s["head_dim"], s["intermediate_size"]
            q_width, kv_width = s["q_width"], s["kv_width"]
            if nkv:
                total += hidden  # input norm
                total += hidden * (q_width + 2 * kv_width) + q_width * hidden
                total += sum(n for role, n in (("q", q_width), ("k", kv_width), ("v", kv_width))
                             if role in anatomy.biases)
                if "o" in anatomy.biases or self.output_bias:
                    total += hidden
                if "q_norm" in layer.modules:
                    total += 2 * hd
            if inter:
                total += hidden + 3 * hidden * inter
                total += sum(inter for role in ("gate", "up") if role in anatomy.biases)
                if "down" in anatomy.biases or self.output_bias:
                    total += hidden
        emb = anatomy.vocab_size * hidden * (1 if anatomy.tied_embeddings else 2)
        return total + emb if embeddings else total

    def macs_per_token(self, anatomy: Anatomy, context: int = 0) -> int:
        """Multiply-accumulates to produce one token's logits: every linear plus the LM head, plus
        attention scores and values over ``context`` cached tokens."""
        hidden = anatomy.hidden_size if self.hidden_channels is None else len(self.hidden_channels)
        macs = anatomy.vocab_size * hidden
        for s in self.shape(anatomy):
            q_width, kv_width = s["q_width"], s["kv_width"]
            macs += hidden * (q_width + 2 * kv_width) + q_width * hidden + 3 * hidden * s["intermediate_size"]
            macs += 2 * q_width * context
        return macs

    def summary(self, anatomy: Anatomy) -> dict:
        full = Plan.full(anatomy)
        p, p_full = self.num_parameters(anatomy), full.num_parameters(anatomy)
        ne, ne_full = (self.num_parameters(anatomy, embeddings=False),
                       full.num_parameters(anatomy, embeddings=False))
        return {"layers": len(self.layers), "of_layers": anatomy.num_layers,
                "parameters": p, "parameters_ratio": round(p / p_full, 4),
                "non_embedding_parameters": ne, "non_embedding_ratio": round(ne / ne_full, 4),
                "macs_per_token": self.macs_per_token(anatomy),
                "macs_ratio": round(self.macs_per_token(anatomy) / full.macs_per_token(anatomy), 4),
                "uniform": self.is_uniform(anatomy)}


def source_info(anatomy: Anatomy) -> dict:
    return {"model_type": anatomy.model_type, "num_layers": anatomy.num_layers,
            "hidden_size": anatomy.hidden_size, "vocab_size": anatomy.vocab_size,
            "fingerprint": anatomy.fingerprint}


def _check_indices(idx, size: int, what: str, allow_empty: bool = True) -> None:
    if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise PlanError(f"{what} must be a list of integers", "fix the plan")
    if idx != sorted(set(idx)):
        raise PlanError(f"{what} must be unique and ascending", "sort and de-duplicate them")
    if idx and not (0 <= idx[0] and idx[-1] < size):
        raise PlanError(f"{what} {idx[0]}..{idx[-1]} fall outside 0..{size - 1}", "use indices inside that range")
    if not allow_empty and not idx:
        raise PlanError(f"{what} cannot be empty", "keep at least one")


def _check_rope_pairs(channels: list[int], head_dim: int, what: str) -> None:
    half = head_dim // 2
    kept = set(channels)
    broken = [j for j in channels if (j + half if j < half else j - half) not in kept]
    if broken:
        raise PlanError(f"{what}: channel {broken[0]} is kept without its RoPE partner "
                        f"{(broken[0] + half) % head_dim}", "keep channels j and j + head_dim/2 together")


def _validate_layer(lp: LayerPlan, anatomy: Anatomy) -> None:
    layer = anatomy.layer(lp.index)
    where = f"layer {lp.index}"
    if lp.kv_groups is not None:
        _check_indices(lp.kv_groups, layer.num_kv_groups, f"{where} KV groups")
    groups = layer.num_kv_groups if lp.kv_groups is None else len(lp.kv_groups)
    if lp.query_heads is not None:
        if len(lp.query_heads) != groups:
            raise PlanError(f"{where} lists query heads for {len(lp.query_heads)} groups but keeps {groups} KV groups",
                            "give one list of query heads per kept KV group")
        for q in lp.query_heads:
            _check_indices(q, layer.queries_per_group, f"{where} query heads", allow_empty=False)
        if len({len(q) for q in lp.query_heads}) > 1:
            raise PlanError(f"{where} keeps different numbers of query heads per KV group "
                            f"({[len(q) for q in lp.query_heads]}); grouped-query attention needs equal counts",
                            "keep the same number of query heads in every kept group")
    if lp.head_channels is not None:
        if layer.head_channels is not None or layer.group_head_dims is not None:
            raise PlanError(f"{where} already has pruned head channels", "prune whole heads in this model")
        if anatomy.qk_norm:
            raise PlanError(f"{where} prunes channels inside heads, but this model normalises q and k over "
                            "the whole head (q_norm/k_norm), so the sliced model could not match",
                            "prune whole heads or KV groups instead")
        if lp.per_group_channels:
            if len(lp.head_channels) != groups:
                raise PlanError(f"{where} lists head channels for {len(lp.head_channels)} KV groups but keeps "
                                f"{groups}", "give one list of head channels per kept KV group")
            lists = [(c, f"{where} head channels of kept KV group {i}") for i, c in enumerate(lp.head_channels)]
        else:
            lists = [(lp.head_channels, f"{where} head channels")]
        for channels, what in lists:
            _check_indices(channels, layer.head_dim, what, allow_empty=False)
            if anatomy.rope:
                _check_rope_pairs(channels, layer.head_dim, what)
    if lp.mlp_channels is not None:
        _check_indices(lp.mlp_channels, layer.intermediate_size, f"{where} MLP channels")
