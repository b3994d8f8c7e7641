"""``sheared`` as a method of the common pruning API: the pruning stage in process.

``amoeba prune MODEL --method sheared --budget shape=layers:6,hidden:192`` learns the masks (and the
weights) on the run's calibration windows, or on ``domains`` with dynamic batch loading, and returns
the folded, top-k plan with the trained model. Resumable multi-process runs and continued
pre-training are the ``amoeba sheared`` commands' job.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from amoeba_plugin.data import record_seen_text
from amoeba_plugin.export import scratch_directory
from amoeba_plugin.methods import Method, PruneResult
from amoeba_plugin.options import option, option_like

from .config import DataConfig, TrainConfig, parse_domain_list
from .domains import Domain, load_domains
from .prune import PruneOptions, PruningStage
from .run import BUDGET_KINDS, reference_losses
from .target import shape_plan, target_shape
from .trainer import RunDir, train


@dataclass
class ShearedOptions(PruneOptions):
    """The options of the ``sheared`` method: the pruning stage's (:class:`PruneOptions`) plus the
    training and data settings it takes from :class:`TrainConfig` and :class:`DataConfig`, whose
    fields (help, checks, defaults) they are. Three defaults differ on purpose from `amoeba sheared
    prune`'s: in process the stage trains on the run's calibration windows (32 by default), so it
    takes 50 steps of 4 windows, not 200 of 8 (about 6 passes over them instead of 50), and so few
    steps cannot move every gate from "on" to a good subnet: the masks start at the ``taylor``
    metric's subnet (``mask_init=importance``; ``mask_init=paper`` is the paper's start; numbers in
    docs/sheared.md)."""

    mask_init: str = option_like(PruneOptions, "mask_init", "importance")
    steps: int = option_like(TrainConfig, "steps", 50)
    batch_size: int = option_like(TrainConfig, "batch_size", 4)
    lr: float = option_like(TrainConfig, "lr")
    warmup: float = option_like(TrainConfig, "warmup")
    domains: list[str] | None = option(None, "train on these domains with dynamic batch loading "
                                             "(NAME=TRAIN_SOURCE,HELD_OUT_SOURCE, ';' between domains); "
                                             "default: the run's calibration windows as one domain",
                                       parse=parse_domain_list)
    dynamic: bool = option_like(DataConfig, "dynamic")
    update_every: int = option_like(DataConfig, "update_every")
    reference: str = option_like(DataConfig, "reference")
    seq_len: int = option_like(TrainConfig, "seq_len", help="tokens per training window, with domains (the "
                                                            "calibration windows keep their own length)")

    def __post_init__(self):
        super().__post_init__()
        if self.domains:
            DataConfig(**self.pick(DataConfig))  # the domain specs and the reference, before the model loads


class ShearedMethod(Method):
    """Sheared-LLaMA's targeted structured pruning (Xia et al., ICLR 2024): hard-concrete masks on
    layers, KV groups, queries per group, MLP and hidden channels, a Lagrangian min-max to an exact
    shape, top-k gates folded into the weights."""

    name = "sheared"
    description = ("Sheared-LLaMA targeted pruning: L0 masks + Lagrangian to an exact shape (or the nearest "
                   "shape for a parameter budget), weights trained jointly; exports as a stock HF model")
    capabilities = frozenset({"depth", "width", "hidden", "calibration", "trains", "changes_weights"})
    budget_kinds = BUDGET_KINDS
    options_class = ShearedOptions

    def prune(self, context):
        from accelerate import Accelerator

        from amoeba_plugin.anatomy import anatomy_of

        from .fold import finalize

        options = self.resolve_options(context)
        shape = target_shape(context.anatomy, context.model.config, context.budget, options.shape_rule)
        if options.domains:
            data, seq_len = DataConfig(**options.pick(DataConfig)), options.seq_len
            domains = load_domains(context.tokenizer, data.specs, seq_len, data.heldout_windows)
        else:  # the calibration windows as one domain; the loop reads only data's update settings
            windows = self.calibration_windows(context)
            data, seq_len = DataConfig(dynamic=False), windows.shape[1]
            domains = [Domain("calibration", windows, windows[:1])]
        train_config = TrainConfig(**{**options.pick(TrainConfig), "seq_len": seq_len, "save_every": options.steps,
                                      "log_every": max(1, options.steps // 10), "seed": context.seed})
        model = copy.deepcopy(context.model)  # the shared model stays as it was
        anatomy = anatomy_of(model)
        # train where the model is: a bare Accelerator() would move to CUDA on a GPU machine while the
        # masks and windows stay with the CPU model (seen on an H200: "found at least two devices")
        accelerator = Accelerator(cpu=next(model.parameters()).device.type == "cpu")
        reference = [0.0] * len(domains)
        if len(domains) > 1:
            reference = reference_losses(data, domains, accelerator, source=model,
                                         parameters=shape_plan(anatomy, shape).num_parameters(anatomy))
        stage = PruningStage(model, anatomy, shape, options, train_config.steps, context.seed, domains[0].train)
        with scratch_directory("sheared") as tmp:  # a killed run's scratch is removed by the next one
            result = train(stage, RunDir(tmp), train_config, data, domains, accelerator, resume=False,
                           reference=reference, proportions=None, show_progress=False)
        final = stage.final_model()
        plan, patch, _ = finalize(final, anatomy, stage.masks, target=shape.to_dict())
        if options.domains:  # trained on text the calibration record does not name
            record_seen_text(plan.provenance, [d.train for d in data.specs], "training", by="sheared")
        info = {"target": shape.to_dict(), "steps": result["steps"], "weights": options.weights,
                "final_proportions": dict(zip([d.name for d in domains], result["final_proportions"]))}
        return PruneResult(plan, patch=patch, model=final, info=info)


__all__ = ["ShearedMethod", "ShearedOptions"]
