"""Running a stage end to end, the Python API behind ``amoeba sheared prune|train``.

Order: every check that needs no weights (settings, target against the model's config, domains,
reference, the run directory), then the model and the domains' tokens, the reference losses, the
resumable training, and the atomic export of the result (a stock Hugging Face model whenever the
family's config expresses the shape). Nothing is written before the checks pass.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError, DataError, InvalidBudgetError
from amoeba_plugin.export import write_text_atomic

from .config import CPT_DATA_DEFAULTS, CPT_TRAIN_DEFAULTS, DataConfig, TrainConfig
from .domains import load_domains
from .prune import PruneOptions, PruningStage
from .reference import check_values, parse_reference, scaling_reference
from .target import resolve_target, shape_of_config, shape_plan, target_shape
from .trainer import MODEL, REFERENCE, RUN, SUMMARY, RunDir, distributed_on_cpu, domain_losses, train

#: written next to an exported model: the domains, reference losses and final proportions, so
#: continued pre-training can start where pruning ended
INFO = "sheared.json"
BUDGET_KINDS = ("shape", "params", "nonembed", "count")


def _model_id(model: str) -> str:
    p = Path(str(model)).expanduser()
    return str(p.resolve()) if p.is_dir() else str(model)


def model_config(model: str):
    """The model's config, read without its weights (so shape checks come before loading)."""
    from transformers import AutoConfig

    import amoeba_plugin  # noqa: F401  (registers the amoeba architecture)
    from amoeba_plugin.models import resolve_model_path

    path = resolve_model_path(model)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise AmoebaError(f"cannot read the config of '{model}' ({type(exc).__name__}: {str(exc)[:160]})",
                          "pass a local model directory or the embedded amoeba-tiny-sotu") from None


def read_info(model: str) -> dict | None:
    from amoeba_plugin.models import resolve_model_path

    from amoeba_plugin.statefiles import read_json

    p = Path(resolve_model_path(model)) / INFO
    return read_json(p, "Sheared model info", f"delete {p} (it only carries the domain proportions) or re-export "
                     "the model", default=None)


def _check_reference(data: DataConfig, model: str, stage: str) -> None:
    if not data.dynamic:  # constant proportions need no reference
        return
    kind, value = parse_reference(data.reference)
    if kind == "values":
        check_values(value, data.names)
    elif kind == "model":
        model_config(value)
    elif kind == "source" and stage == "pretraining":
        info = read_info(model)
        if info is None or sorted(info.get("reference", {})) != sorted(data.names):
            raise DataError(f"'{model}' carries no reference losses for the domains {data.names} (no {INFO} from a "
                            "Sheared pruning run with these domains)",
                            "pass --reference model:SOURCE_MODEL (the model before pruning), scaling:FILE or NAME=LOSS,...")


def reference_losses(data: DataConfig, domains, accelerator, *, source=None, model: str | None = None,
                     parameters: float | None = None) -> list[float]:
    """Per-domain reference losses (see :mod:`amoeba_sheared.reference`): ``source`` is the model
    before pruning (pruning) or the reference stored next to ``model`` (continued pre-training)."""
    kind, value = parse_reference(data.reference)
    names = data.names
    if kind == "values":
        values = check_values(value, names)
    elif kind == "scaling":
        values = scaling_reference(value, names, parameters)
    elif kind == "source" and source is None:
        values = read_info(model)["reference"]
    else:
        if kind == "model":
            from amoeba_plugin.models import load_model

            source = load_model(value)[0].to(accelerator.device)
        source.eval()
        losses = domain_losses(lambda x: source(input_ids=x, use_cache=False).logits, domains, accelerator)
        values = dict(zip(names, losses))
    return [float(values[n]) for n in names]


def _start(run: RunDir, settings: dict, resume: bool, accelerator) -> None:
    if accelerator.is_main_process and not resume:
        run.reset()
        run.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run / RUN, json.dumps(settings, indent=1))
    accelerator.wait_for_everyone()


def _reference(run: RunDir, resume: bool, compute, names, accelerator, dynamic: bool) -> list[float] | None:
    if not dynamic:
        return None
    if resume and (run / REFERENCE).is_file():
        from amoeba_plugin.statefiles import read_json

        saved = read_json(run / REFERENCE, "Sheared reference losses", f"delete {run / REFERENCE} to measure them again")
        if not isinstance(saved.get("losses"), list) or len(saved["losses"]) != len(names):
            raise AmoebaError(f"Sheared reference losses {run / REFERENCE} are damaged (no losses for {len(names)} "
                              "domains)", f"delete {run / REFERENCE} to measure them again")
        return saved["losses"]
    losses = compute()
    if accelerator.is_main_process:
        write_text_atomic(run / REFERENCE, json.dumps({"domains": names, "losses": losses}, indent=1))
    return losses


def _named(names, values):
    return None if values is None else dict(zip(names, values))


def _record_texts(info: dict, data: DataConfig, model: str, by: str) -> dict:
    """Every text the exported model saw: this run's domains (training) and what ``model`` saw."""
    from amoeba_plugin.data import record_seen_text
    from amoeba_plugin.models import resolve_model_path
    from amoeba_plugin.pipeline import inherit_texts

    record_seen_text(info, [d.train for d in data.specs], "training", by=by)
    try:
        return inherit_texts(info, resolve_model_path(model))
    except AmoebaError:
        return info


def _export(run: RunDir, model, anatomy, plan, patch, tokenizer, sliced, info: dict) -> Path:
    from amoeba_plugin.export import ExportRequest, export

    plan.provenance.setdefault("data", {})["seen"] = info.get("data", {}).get("seen", [])

    request = ExportRequest(model=model, anatomy=anatomy, plan=plan, tokenizer=tokenizer, patch=patch,
                            info=info, sliced=sliced)
    return export("auto", request, run / MODEL, overwrite=True,
                  extra=lambda tmp: (tmp / INFO).write_text(json.dumps(info["sheared"], indent=1)))


def _finish_summary(run: RunDir, summary: dict, accelerator) -> dict:
    if accelerator.is_main_process:
        write_text_atomic(run / SUMMARY, json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return summary


# ---------------------------------------------------------------------- pruning
def prune(model: str, output, target: str | Budget = "0.5", data: DataConfig | None = None,
          train_config: TrainConfig | None = None, options: PruneOptions | None = None, *, restart: bool = False,
          stop_after: int | None = None, show_progress: bool = True) -> dict:
    """Prune ``model`` to ``target`` (``shape=...`` or a parameter budget) in the run directory
    ``output``; resume it when it holds this run's checkpoint. Returns the summary."""
    from accelerate import Accelerator

    from amoeba_plugin.anatomy import anatomy_of
    from amoeba_plugin.models import load_model
    from amoeba_plugin.surgery import slice_model

    from .fold import finalize
    from .masked import MaskedModel

    data = data or DataConfig()
    train_config = train_config or TrainConfig()
    options = options or PruneOptions()
    budget = Budget.parse(target)
    if budget.kind not in BUDGET_KINDS:
        raise InvalidBudgetError(f"Sheared pruning cannot meet a '{budget.kind}' budget",
                                 f"use one of: {', '.join(BUDGET_KINDS)} (e.g. shape=layers:6,hidden:192 or 0.5)")
    source = shape_of_config(model_config(model))
    if budget.kind == "shape":
        resolve_target(source, budget.value)
    _check_reference(data, model, "pruning")
    settings = {"stage": "pruning", "model": _model_id(model), "target": str(budget), "train": train_config.to_dict(),
                "data": data.to_dict(), "options": options.to_dict()}
    run = RunDir(output)
    resume = run.check(settings, restart)

    accelerator = Accelerator(cpu=distributed_on_cpu())
    loaded, tokenizer = load_model(model)
    loaded.to(accelerator.device)
    anatomy = anatomy_of(loaded)
    shape = target_shape(anatomy, loaded.config, budget, options.shape_rule)
    domains = load_domains(tokenizer, data.specs, train_config.seq_len, data.heldout_windows)
    resume = resume and run.state() is not None
    _start(run, settings, resume, accelerator)
    params = shape_plan(anatomy, shape).num_parameters(anatomy)
    reference = _reference(run, resume, lambda: reference_losses(data, domains, accelerator, source=loaded,
                                                                 parameters=params), data.names, accelerator, data.dynamic)
    stage = PruningStage(loaded, anatomy, shape, options, train_config.steps, train_config.seed,
                         calibration=domains[0].train)
    result = train(stage, run, train_config, data, domains, accelerator, resume=resume, reference=reference,
                   proportions=data.proportions, stop_after=stop_after, show_progress=show_progress)
    summary = {"stage": "pruning", "target": shape.to_dict(), "budget": str(budget), **result,
               "reference": _named(data.names, reference), "finished": result["steps"] >= train_config.steps}
    if not summary["finished"]:
        return summary
    final = stage.final_model()
    plan, patch, _ = finalize(final, anatomy, stage.masks, method="sheared", budget=str(budget),
                                  target=shape.to_dict(), seed=train_config.seed)
    sliced = slice_model(final, anatomy, plan, patch)
    probe = domains[0].heldout[:2].to(accelerator.device)
    masked = MaskedModel(final, anatomy, stage.masks).eval()
    masked.exact = True
    with torch.no_grad():
        gap = float((masked(probe)[0] - sliced(input_ids=probe, use_cache=False).logits).abs().max())
    masked.detach()
    losses = domain_losses(lambda x: sliced(input_ids=x, use_cache=False).logits, domains, accelerator)
    summary.update(masked_vs_sliced_max_abs=gap, heldout_loss=dict(zip(data.names, losses)),
                   parameters=sum(p.numel() for p in sliced.parameters()), stock=type(sliced).__name__)
    if accelerator.is_main_process:
        info = {"method": "sheared", "budget": str(budget), "summary": {k: summary[k] for k in (
            "target", "steps", "parameters", "masked_vs_sliced_max_abs")},
            "sheared": {"stage": "pruning", "source_model": _model_id(model), "target": shape.to_dict(),
                        "domains": data.names, "reference": _named(data.names, reference),
                        "reference_kind": data.reference, "final_proportions": result["final_proportions"]}}
        _record_texts(info, data, model, "sheared")
        summary["model"] = str(_export(run, final, anatomy, plan, patch, tokenizer, sliced, info))
    return _finish_summary(run, summary, accelerator)


# ---------------------------------------------------------------------- continued pre-training
def pretrain(model: str, output, data: DataConfig | None = None, train_config: TrainConfig | None = None, *,
             restart: bool = False, stop_after: int | None = None, show_progress: bool = True,
             init: str = "pretrained") -> dict:
    """Continued pre-training of ``model`` (usually a Sheared-pruned one) on the domain mixture.

    Initial proportions: ``data.proportions``, else the pruning run's final ones when ``model``
    carries them for the same domains, else uniform. ``init="random"`` trains the same shape from
    scratch (the benchmark's baseline)."""
    from accelerate import Accelerator

    from amoeba_plugin.anatomy import anatomy_of
    from amoeba_plugin.models import load_model
    from amoeba_plugin.plan import Plan

    from .pretrain import PretrainingStage

    data = data or DataConfig(**CPT_DATA_DEFAULTS)
    train_config = train_config or TrainConfig(**CPT_TRAIN_DEFAULTS)
    if init not in ("pretrained", "random"):
        raise AmoebaError(f"unknown init '{init}'", "use pretrained or random")
    model_config(model)
    _check_reference(data, model, "pretraining")
    info = read_info(model) or {}
    proportions = data.proportions
    if proportions is None and info.get("domains") == data.names and init == "pretrained":
        proportions = info.get("final_proportions")
    settings = {"stage": "pretraining", "model": _model_id(model), "init": init, "train": train_config.to_dict(),
                "data": data.to_dict(), "initial_proportions": proportions}
    run = RunDir(output)
    resume = run.check(settings, restart)

    accelerator = Accelerator(cpu=distributed_on_cpu())
    loaded, tokenizer = load_model(model)
    if init == "random":
        torch.manual_seed(train_config.seed)
        loaded = type(loaded)(loaded.config)
    loaded.to(accelerator.device)
    anatomy = anatomy_of(loaded)
    domains = load_domains(tokenizer, data.specs, train_config.seq_len, data.heldout_windows)
    resume = resume and run.state() is not None
    _start(run, settings, resume, accelerator)
    params = sum(p.numel() for p in loaded.parameters())
    reference = _reference(run, resume, lambda: reference_losses(data, domains, accelerator, model=model,
                                                                 parameters=params), data.names, accelerator, data.dynamic)
    stage = PretrainingStage(loaded)
    result = train(stage, run, train_config, data, domains, accelerator, resume=resume, reference=reference,
                   proportions=proportions, stop_after=stop_after, show_progress=show_progress)
    summary = {"stage": "pretraining", "init": init, **result, "reference": _named(data.names, reference),
               "finished": result["steps"] >= train_config.steps}
    if not summary["finished"]:
        return summary
    final = stage.final_model()
    losses = domain_losses(stage.eval_forward(), domains, accelerator)
    summary.update(heldout_loss=dict(zip(data.names, losses)), parameters=params,
                   tokens=train_config.steps * train_config.batch_size * train_config.grad_accum
                   * accelerator.num_processes * train_config.seq_len)
    if accelerator.is_main_process:
        export_info = {"method": "sheared-cpt", "summary": {k: summary[k] for k in ("steps", "parameters", "tokens")},
                       "sheared": {**{k: v for k, v in info.items() if k != "final_proportions"},
                                   "stage": "pretraining", "domains": data.names,
                                   "reference": _named(data.names, reference) or info.get("reference"),
                                   "final_proportions": result["final_proportions"]}}
        _record_texts(export_info, data, model, "sheared-cpt")
        summary["model"] = str(_export(run, final, anatomy, Plan.full(anatomy), None, tokenizer, None, export_info))
    return _finish_summary(run, summary, accelerator)


__all__ = ["BUDGET_KINDS", "INFO", "model_config", "pretrain", "prune", "read_info", "reference_losses"]
