"""``sheared`` as a method of the common pruning API: the pruning stage in process.

``amoeba prune MODEL --method sheared --budget shape=layers:6,hidden:192`` learns the masks (and the
weights) on the run's calibration windows, or on ``domains`` with dynamic batch loading, and returns
the folded, top-k plan with the trained model. Resumable multi-process runs and continued
pre-training are the ``amoeba sheared`` commands' job.
"""
from __future__ import annotations

import copy
import tempfile

from amoeba_plugin.methods import Method, PruneResult

from .config import DataConfig, TrainConfig
from .domains import Domain, load_domains
from .prune import PruneOptions, PruningStage
from .run import BUDGET_KINDS, reference_losses
from .target import nearest_shape, shape_plan
from .trainer import RunDir, train


class ShearedMethod(Method):
    """Sheared-LLaMA's targeted structured pruning (Xia et al., ICLR 2024): hard-concrete masks on
    layers, KV groups, queries per group, MLP and hidden channels, a Lagrangian min-max to an exact
    shape, top-k gates folded into the weights."""

    name = "sheared"
    description = ("Sheared-LLaMA targeted pruning: L0 masks + Lagrangian to an exact shape (or the nearest "
                   "shape for a parameter budget), weights trained jointly; exports as a stock HF model")
    capabilities = frozenset({"depth", "width", "hidden", "calibration", "trains", "changes_weights"})
    budget_kinds = BUDGET_KINDS
    default_options = {"steps": 50, "batch_size": 4, "lr": 1e-4, "warmup": 0.1, "weights": "full", "mask_lr": 1.0,
                       "lambda_lr": 1.0, "target_warmup": 0.2, "lora_rank": 8, "lora_alpha": 16.0,
                       "domains": None, "dynamic": True, "update_every": 50, "reference": "source",
                       "seq_len": 256}

    def prune(self, context):
        from accelerate import Accelerator

        from amoeba_plugin.anatomy import anatomy_of

        from .fold import finalize

        o = self.resolve_options(context)
        options = PruneOptions(weights=o["weights"], lora_rank=o["lora_rank"], lora_alpha=o["lora_alpha"],
                               mask_lr=o["mask_lr"], lambda_lr=o["lambda_lr"], target_warmup=o["target_warmup"])
        shape = nearest_shape(context.anatomy, context.model.config, context.budget)
        if o["domains"]:
            data = DataConfig(domains=o["domains"], dynamic=o["dynamic"], update_every=o["update_every"],
                              reference=o["reference"])
            seq_len = o["seq_len"]
            domains = load_domains(context.tokenizer, data.specs, seq_len, data.heldout_windows)
        else:  # the calibration windows as one domain; the loop reads only data's update settings
            windows = self.calibration_windows(context)
            data, seq_len = DataConfig(dynamic=False), windows.shape[1]
            domains = [Domain("calibration", windows, windows[:1])]
        train_config = TrainConfig(steps=o["steps"], batch_size=o["batch_size"], lr=o["lr"], warmup=o["warmup"],
                                   seq_len=seq_len, save_every=o["steps"], log_every=max(1, o["steps"] // 10),
                                   seed=context.seed)
        model = copy.deepcopy(context.model)  # the shared model stays as it was
        anatomy = anatomy_of(model)
        accelerator = Accelerator()
        reference = [0.0] * len(domains)
        if len(domains) > 1:
            reference = reference_losses(data, domains, accelerator, source=model,
                                         parameters=shape_plan(anatomy, shape).num_parameters(anatomy))
        stage = PruningStage(model, anatomy, shape, options, train_config.steps, context.seed)
        with tempfile.TemporaryDirectory(prefix="sheared-") as tmp:
            result = train(stage, RunDir(tmp), train_config, data, domains, accelerator, resume=False,
                           reference=reference, proportions=None, show_progress=False)
        final = stage.final_model()
        plan, patch, _ = finalize(final, anatomy, stage.masks, target=shape.to_dict())
        info = {"target": shape.to_dict(), "steps": result["steps"], "weights": options.weights,
                "final_proportions": dict(zip([d.name for d in domains], result["final_proportions"]))}
        return PruneResult(plan, patch=patch, model=final, info=info)


__all__ = ["ShearedMethod"]
