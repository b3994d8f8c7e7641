"""The end of pruning: deterministic top-k gates, their values folded into the weights, a Plan.

The gates multiply activations (see :mod:`.masked`); each product becomes a weight scale:

| gate | folded into |
|---|---|
| head (``kv`` x ``query``) | the head's columns of ``o_proj`` (GQA: v is shared by a group's heads, so not v's rows) |
| ``intermediate`` | the channel's column of ``down_proj`` |
| ``layer`` x ``hidden`` | the rows (and bias) of ``o_proj`` and ``down_proj`` |
| ``hidden`` | embedding columns (tied: the LM head with them), each layer's two RMSNorm weights, an untied LM head's columns |

The final norm's weight is not scaled, so the hidden gate reaches the logits once (the official code
scales both the final norm and the LM head, applying it twice).

The patch (source-named tensors of the source shape) and the plan go to the host's
``slice_model``, which builds the smaller model; the result computes what the masked model with the
same gates computes.
"""
from __future__ import annotations

import torch

from amoeba_plugin.plan import LayerPlan, Plan, source_info

from .masked import gate_scales
from .masks import ShearingMasks


def _kept(gate: torch.Tensor | None, n: int) -> list[int] | None:
    if gate is None:
        return None
    kept = torch.nonzero(gate.reshape(-1) != 0).reshape(-1).tolist()
    return None if len(kept) == n else kept


def gates_plan(anatomy, masks: ShearingMasks, gates: dict[str, torch.Tensor], **provenance) -> Plan:
    """The plan keeping every unit whose gate is non-zero."""
    s = masks.source
    layers = _kept(gates.get("layer"), s.layers)
    layers = list(range(s.layers)) if layers is None else layers
    out = []
    for l in layers:
        kv = _kept(gates["kv"][l], s.kv_heads) if "kv" in gates else None
        q = _kept(gates["query"][l], s.queries_per_group) if "query" in gates else None
        groups = s.kv_heads if kv is None else len(kv)
        out.append(LayerPlan(l, kv_groups=kv, query_heads=None if q is None else [q] * groups,
                             mlp_channels=_kept(gates["intermediate"][l], s.intermediate)
                             if "intermediate" in gates else None))
    return Plan(out, source=source_info(anatomy), hidden_channels=_kept(gates.get("hidden"), s.hidden),
                provenance=dict(provenance))


def fold_patch(model, anatomy, masks: ShearingMasks, gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Source-named weights with the gate values multiplied in (only the tensors that change)."""
    scales = gate_scales(masks, gates)
    state = model.state_dict()
    patch: dict[str, torch.Tensor] = {}

    def scaled(name, rows=None, cols=None):
        t = patch.get(name, state[name]).detach().clone()
        if rows is not None:
            t = t * (rows.to(t.dtype)[:, None] if t.dim() == 2 else rows.to(t.dtype))
        if cols is not None:
            t = t * cols.to(t.dtype)[None, :]
        patch[name] = t

    for layer in anatomy.layers:
        l, mods = layer.index, layer.modules
        head, block, inter = scales["head"][l], scales["block"][l], scales["intermediate"][l]
        if head is not None:
            scaled(mods["o"] + ".weight", cols=head)
        if inter is not None:
            scaled(mods["down"] + ".weight", cols=inter)
        if block is not None:
            for role in ("o", "down"):
                rows = block.expand(anatomy.hidden_size) if block.dim() == 0 else block
                scaled(mods[role] + ".weight", rows=rows)
                if mods[role] + ".bias" in state:
                    scaled(mods[role] + ".bias", rows=rows)
        if scales["hidden"] is not None:
            for role in ("input_norm", "post_attention_norm"):
                scaled(mods[role] + ".weight", rows=scales["hidden"])
    if scales["hidden"] is not None:
        scaled(anatomy.embed + ".weight", cols=scales["hidden"])
        if not anatomy.tied_embeddings:
            scaled(anatomy.lm_head + ".weight", cols=scales["hidden"])
    return patch


def finalize(model, anatomy, masks: ShearingMasks, **provenance) -> tuple[Plan, dict, dict]:
    """``(plan, patch, gates)`` for the exact target: top-k per row, values folded."""
    gates = masks.deterministic(exact=True)
    return gates_plan(anatomy, masks, gates, **provenance), fold_patch(model, anatomy, masks, gates), gates


__all__ = ["finalize", "fold_patch", "gates_plan"]
