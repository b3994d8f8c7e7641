"""A candidate subnet: the genome the evolution mutates.

Genes (the paper's, §3–5): which layers are kept (depth), and per layer the explicit masks, one per
KV group over its RoPE pairs and one over the MLP channels. A mask's size is its ratio gene, so the
ratio and the mask can never disagree (the paper's literal sampler can leave a changed ratio with an
unchanged mask; see :mod:`.operators`). Dropped layers keep their masks, so re-adding a layer restores
what it had. Candidates are identified by a hash of what they compute (kept layers and their masks),
which de-duplicates the search.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plan import LayerPlan, Plan, source_info

from .space import SearchSpace


@dataclass
class Candidate:
    kept: np.ndarray                 # bool [layers]
    attention: list[list[np.ndarray]]  # [layer][group] bool [pairs]
    mlp: list[np.ndarray]            # [layer] bool [channels]

    # ------------------------------------------------------------------ construction
    @classmethod
    def full(cls, space: SearchSpace) -> Candidate:
        return cls(np.ones(space.num_layers, dtype=bool),
                   [[np.ones(u.pairs, dtype=bool) for _ in range(u.groups)] for u in space.layers],
                   [np.ones(u.channels, dtype=bool) for u in space.layers])

    def copy(self) -> Candidate:
        return Candidate(self.kept.copy(), [[m.copy() for m in groups] for groups in self.attention],
                         [m.copy() for m in self.mlp])

    # ------------------------------------------------------------------ what it keeps
    @property
    def layers(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.kept)]

    @property
    def depth(self) -> int:
        return int(self.kept.sum())

    def pair_counts(self) -> list[list[int]]:
        return [[int(m.sum()) for m in groups] for groups in self.attention]

    def channel_counts(self) -> list[int]:
        return [int(m.sum()) for m in self.mlp]

    def cost(self, model) -> float:
        """Cost in the budget's unit under :class:`~.space.CostModel` ``model``."""
        return model.cost(self.layers, self.pair_counts(), self.channel_counts())

    def key(self) -> str:
        """Hash of what the candidate computes: masks of dropped layers do not count."""
        h = hashlib.sha1()
        for layer in self.layers:
            h.update(layer.to_bytes(2, "little"))
            for m in (*self.attention[layer], self.mlp[layer]):
                h.update(np.packbits(m).tobytes())
                h.update(len(m).to_bytes(4, "little"))
        return h.hexdigest()[:20]

    def ratios(self) -> dict:
        """Local inheriting ratios of the kept layers: per group attention, per layer MLP."""
        out = []
        for layer in self.layers:
            out.append({"layer": layer, "attention": [round(float(m.mean()), 4) for m in self.attention[layer]],
                        "mlp": round(float(self.mlp[layer].mean()), 4)})
        return {"depth": self.depth, "layers": out}

    # ------------------------------------------------------------------ the plan it stands for
    def to_plan(self, anatomy, output_bias: bool = False, **provenance) -> Plan:
        """The plan of this subnet: kept layers, per-KV-group head channels (both members of each kept
        RoPE pair), kept MLP channels. Whole units stay ``None`` so uniform results export as stock HF.
        A group that keeps no pair is a removed KV group (a layer with none has no attention); an MLP
        that keeps no channel is removed (a warm start from a plan that removed them, see :mod:`.warm`)."""
        layers = []
        for layer in self.layers:
            la = anatomy.layer(layer)
            half = la.head_dim // 2
            groups, per_group = [], []
            for g, m in enumerate(self.attention[layer]):
                pairs = [int(j) for j in np.flatnonzero(m)]
                if pairs:
                    groups.append(g)
                    per_group.append(pairs + [j + half for j in pairs])
            kv_groups = None if len(groups) == la.num_kv_groups else groups
            if not per_group or all(len(c) == la.head_dim for c in per_group):
                channels = None
            elif all(c == per_group[0] for c in per_group):
                channels = per_group[0]
            else:
                channels = per_group
            mlp = self.mlp[layer]
            layers.append(LayerPlan(layer, kv_groups=kv_groups, head_channels=channels,
                                    mlp_channels=None if mlp.all() else [int(i) for i in np.flatnonzero(mlp)]))
        return Plan(layers, source=source_info(anatomy), output_bias=output_bias, provenance=dict(provenance))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """Compact JSON: masks as hex of their packed bits."""
        pack = lambda m: np.packbits(m).tobytes().hex()  # noqa: E731
        return {"kept": self.layers, "attention": [[pack(m) for m in groups] for groups in self.attention],
                "mlp": [pack(m) for m in self.mlp]}

    @classmethod
    def from_dict(cls, data: dict, space: SearchSpace) -> Candidate:
        try:
            unpack = lambda text, n: np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)  # noqa: E731
            kept = np.zeros(space.num_layers, dtype=bool)
            kept[list(data["kept"])] = True
            attention = [[unpack(t, u.pairs) for t in groups] for groups, u in zip(data["attention"], space.layers)]
            mlp = [unpack(t, u.channels) for t, u in zip(data["mlp"], space.layers)]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise AmoebaError(f"a saved candidate cannot be read ({type(exc).__name__}: {exc})",
                              "the search checkpoint is damaged: start the search again (--restart)") from None
        if len(attention) != space.num_layers or len(mlp) != space.num_layers:
            raise AmoebaError("a saved candidate has another number of layers than this model",
                              "resume the search with the model it was started on")
        return cls(kept, attention, mlp)


__all__ = ["Candidate"]
