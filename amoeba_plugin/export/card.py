"""The model card (``README.md``) every export carries: what was pruned, how, and how to load it.

The card states facts only: the plan, its provenance (method, budget, metric, seed, calibration),
exact parameter and MAC counts from :meth:`Plan.summary`, metrics the caller measured, and the
loading recipe that fits the architecture that was written.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

from ..plan import Plan

TAGS = ("amoeba-plugin", "pruned", "structured-pruning")
#: provenance keys rendered in the "How it was pruned" list, in this order, with their labels
_FACTS = (("method", "Method"), ("budget", "Budget"), ("metric", "Importance metric"), ("seed", "Seed"),
          ("calibration", "Calibration data"))
#: info keys that are not facts about pruning (or that other sections render)
_SKIP = {"source_model", "plan", "summary", "pruning_config", "method_info", "perplexity", "metrics", "recovery"}
#: what a card says about the weights when recovery trained them after slicing
UNCHANGED = "the remaining weights are copied from the source unchanged"
RECOVERED = "the remaining weights were copied from the source, then trained to recover (see Recovery below)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _version() -> str:
    from .. import __version__

    return __version__


def hub_id(source: Any) -> str | None:
    """``source`` when it looks like a Hugging Face Hub repo id (not a local path), else None."""
    if not isinstance(source, str) or not _HUB_ID.match(source) or source.endswith((".", "-")):
        return None
    if os.path.exists(source) or ".." in source:
        return None
    return source


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, default=str)}`"
    return str(value)


def _metric_rows(info: dict) -> list[tuple[str, Any, Any, str | None]]:
    """(name, before, after, evaluated on) for every metric the caller reported."""
    rows: list[tuple[str, Any, Any, str | None]] = []
    ppl = info.get("perplexity")
    if isinstance(ppl, dict) and ("before" in ppl or "after" in ppl):
        rows.append(("perplexity", ppl.get("before"), ppl.get("after"), ppl.get("source")))
    metrics = info.get("metrics")
    if isinstance(metrics, dict):
        for name, value in metrics.items():
            if isinstance(value, dict):
                rows.append((name, value.get("before"), value.get("after"), value.get("source")))
    for key in info:
        if key.endswith("_before"):
            name = key[: -len("_before")]
            if any(r[0] == name for r in rows):
                continue
            rows.append((name, info.get(key), info.get(f"{name}_after"), info.get(f"{name}_source")))
        elif key.endswith("_after") and f"{key[: -len('_after')]}_before" not in info:
            name = key[: -len("_after")]
            if not any(r[0] == name for r in rows):
                rows.append((name, None, info.get(key), info.get(f"{name}_source")))
    return rows


def _model_index(name: str, info: dict) -> list[str]:
    """``model-index`` YAML lines (the Hub's evaluation results) for the metrics measured after pruning."""
    results = [(metric, after, where) for metric, _, after, where in _metric_rows(info)
               if isinstance(after, (int, float)) and not isinstance(after, bool)]
    if not results:
        return []
    lines = ["model-index:", f"- name: {_yaml_str(name.rsplit('/', 1)[-1] + '-pruned')}", "  results:"]
    for metric, value, where in results:
        lines += ["  - task:", "      type: text-generation",
                  "    dataset:", f"      name: {_yaml_str(where or 'unspecified')}",
                  f"      type: {_yaml_str(where or 'unspecified')}",
                  "    metrics:", f"    - type: {_yaml_str(metric)}", f"      value: {float(value):.6g}",
                  f"      name: {_yaml_str(f'{metric} after pruning')}"]
    return lines


def _is_metric_key(key: str, info: dict) -> bool:
    if key.endswith(("_before", "_after")):
        return True
    return key.endswith("_source") and (f"{key[:-7]}_before" in info or f"{key[:-7]}_after" in info)


def model_card(request, exporter_name: str, sliced_model=None) -> str:
    """``README.md`` for an export of ``request`` by ``exporter_name``; ``sliced_model`` is the model
    written next to it (None for a plan-only export)."""
    plan: Plan = request.plan
    anatomy = request.anatomy
    info = {k: v for k, v in dict(request.info or {}).items()}
    facts = {**dict(plan.provenance or {}), **{k: v for k, v in info.items() if k not in _SKIP}}
    if "calibration" not in facts and isinstance(facts.get("data"), dict):  # the run's one data record
        from ..pipeline import recorded_calibration

        facts["calibration"] = recorded_calibration(facts)
    from ..models import KNOWN_SOURCES, source_facts

    source = info.get("source_model") or plan.source.get("name")
    known = source_facts(request.model) or KNOWN_SOURCES.get(source, {})
    # a project name ("smollm2-135m") maps to its hub id; anything else that looks like one is one
    base = known.get("hub_id") if known or source in KNOWN_SOURCES else hub_id(source)
    summary = plan.summary(anatomy)
    full = Plan.full(anatomy)
    before, before_ne = full.num_parameters(anatomy), full.num_parameters(anatomy, embeddings=False)
    kept = [lp.index for lp in plan.layers]
    dropped = [i for i in range(anatomy.num_layers) if i not in set(kept)]
    model_type = getattr(getattr(sliced_model, "config", None), "model_type", None)
    amoeba = model_type == "amoeba"
    arch = type(sliced_model).__name__ if sliced_model is not None else None

    lines = ["---", "library_name: transformers"]
    if base:
        lines.append(f"base_model: {_yaml_str(base)}")
    if known.get("license"):
        lines.append(f"license: {known['license']}")
    method = facts.get("method")
    tags = [*TAGS, *([str(method)] if isinstance(method, str) and method not in TAGS else [])]
    lines += ["tags:", *[f"- {t}" for t in tags], "pipeline_tag: text-generation"]
    lines += _model_index(str(base or source or "pruned-model"), info)
    lines += ["---", ""]

    what = f"`{source}`" if source else f"a {anatomy.model_type} model"
    if base:
        what = f"[`{base}`](https://huggingface.co/{base})"
    if sliced_model is None:
        lines += [f"# Pruning plan for {source or anatomy.model_type}", "",
                  f"This directory holds only a structured-pruning plan (`plan.json`) for {what}, written by "
                  f"amoeba-plugin {_version()} with the `{exporter_name}` exporter. It contains no weights.", ""]
    else:
        lines += [f"# {source or anatomy.model_type} (structurally pruned)", "",
                  f"A structurally pruned version of {what} ({anatomy.model_type}, {anatomy.num_layers} layers), "
                  f"written by amoeba-plugin {_version()} with the `{exporter_name}` exporter. Whole structural "
                  "units (layers, attention heads, KV groups, channels) were removed, so the model is physically "
                  "smaller; " + (RECOVERED if info.get("recovery") else UNCHANGED
                                 + (" except for the compensation tensors listed below" if request.patch else ""))
                  + ".", ""]

    lines += ["## How it was pruned", ""]
    for key, label in _FACTS:
        if key in facts:
            value = facts[key]
            if key == "calibration" and value is None:
                value = "none (data-free)"
            lines.append(f"- {label}: {_fmt(value)}")
        elif key in ("method", "calibration"):
            lines.append(f"- {label}: not recorded")
    extra = [k for k in facts if k not in dict(_FACTS) and not _is_metric_key(k, info)]
    for key in extra:
        lines.append(f"- {key.replace('_', ' ')}: {_fmt(facts[key])}")
    if plan.output_bias:
        lines.append("- Output biases: every kept `o_proj` and `down_proj` carries a bias (bias compensation)")
    if request.patch:
        lines.append(f"- Compensation: {len(request.patch)} tensor(s) computed by the method "
                     + ("were folded into the weights and are saved as `amoeba_patch/patch.safetensors`" if sliced_model is not None
                        else "are saved as `amoeba_patch/patch.safetensors` beside the plan"))
    lines.append("")

    lines += ["## Result", "",
              f"- Layers: {len(kept)} of {anatomy.num_layers} kept; dropped: "
              + (", ".join(str(i) for i in dropped) if dropped else "none")]
    if plan.hidden_channels is not None:
        lines.append(f"- Hidden size: {len(plan.hidden_channels)} of {anatomy.hidden_size} channels kept")
    lines += [
        f"- Parameters: {before:,} → {summary['parameters']:,} ({summary['parameters_ratio']:.2%} of the original)",
        f"- Non-embedding parameters: {before_ne:,} → {summary['non_embedding_parameters']:,} "
        f"({summary['non_embedding_ratio']:.2%})",
        f"- MACs per token: {full.macs_per_token(anatomy):,} → {summary['macs_per_token']:,} "
        f"({summary['macs_ratio']:.2%} of the original)",
        f"- Same shape in every layer: {'yes' if summary['uniform'] else 'no'}",
    ]
    if sliced_model is not None:
        lines.append(f"- Architecture: `{arch}` (model_type `{model_type}`)"
                     + (", the amoeba-plugin per-layer architecture" if amoeba else ", the family's stock class"))
        from ..models import stored_dtype
        from .writers import export_dtype

        written, source_dtype = str(export_dtype(request)).removeprefix("torch."), stored_dtype(request.model)
        lines.append(f"- Weights: {written} " + ("(the source model's dtype)" if written == source_dtype
                                                 else f"(the source model is stored in {source_dtype})"))
    lines.append("")

    lines += ["## Per-layer shapes", "",
              "| layer | source layer | query heads | KV groups | head_dim | MLP width |",
              "|---:|---:|---:|---:|---:|---:|"]
    for new, (shape, lp) in enumerate(zip(plan.shape(anatomy), plan.layers)):
        src = anatomy.layer(lp.index)
        lines.append(f"| {new} | {lp.index} | {shape['query_heads']} / {src.num_query_heads} | "
                     f"{shape['kv_groups']} / {src.num_kv_groups} | {shape['head_dim']} / {src.head_dim} | "
                     f"{shape['intermediate_size']} / {src.intermediate_size} |")
    lines += ["", "Each cell is kept / source. A layer with 0 KV groups has no attention block; one with MLP width 0 "
              "has no MLP block.", ""]

    rows = _metric_rows(info)
    if rows:
        lines += ["## Evaluation", "", "| metric | data | before | after |", "|---|---|---:|---:|"]
        for name, b, a, where in rows:
            lines.append(f"| {name} | {where or '-'} | {'-' if b is None else _fmt(b)} | "
                         f"{'-' if a is None else _fmt(a)} |")
        lines.append("")

    if info.get("recovery"):
        lines += recovery_section(info["recovery"]).splitlines()
    lines += ["## How to use", ""]
    if sliced_model is None:
        lines += ["Apply the plan to the source model with the `amoeba` CLI:", "", "```bash",
                  f"amoeba export {source or 'SOURCE_MODEL'} --plan path/to/this/directory --output pruned-model",
                  "```", "", "or in Python:", "", "```python", "from transformers import AutoModelForCausalLM", "",
                  "from amoeba_plugin import Plan, anatomy_of, slice_model", "",
                  f"model = AutoModelForCausalLM.from_pretrained({json.dumps(source or 'SOURCE_MODEL')})",
                  "plan = Plan.load(\"path/to/this/directory\")",
                  "small = slice_model(model, anatomy_of(model), plan)", "```", ""]
    elif amoeba:
        lines += ["This model uses the `amoeba` architecture (each layer has its own shape). Install "
                  "amoeba-plugin and import it before loading; it registers the architecture with transformers' "
                  "Auto classes (no `trust_remote_code`):", "", "```python",
                  "import amoeba_plugin  # noqa: F401  (registers model_type \"amoeba\")",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/directory\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")", "```", ""]
    else:
        lines += ["This model uses the stock transformers architecture of its family; it loads without "
                  "amoeba-plugin:", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/directory\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")", "```", ""]
    if request.patch:
        lines += [f"`plan.json` records which units of the source model were kept, and `amoeba_patch/patch.safetensors` the "
                  f"{len(request.patch)} tensor(s) the method changed; together they reproduce this "
                  "export from the source model: `amoeba export SOURCE --plan path/to/this/directory`.", ""]
    else:
        lines += ["`plan.json` records exactly which units of the source model were kept; the method changed no "
                  "weight, so `amoeba export SOURCE --plan plan.json` reproduces this export from the source model."
                  if sliced_model is not None else
                  "`plan.json` lists, by index into the source model, the kept layers, KV groups, query heads, "
                  "head channels and MLP channels.", ""]
    return "\n".join(lines)


def recovery_section(records) -> str:
    """The card's "Recovery" section: one entry per recovery run (a record or a list of them, as
    :meth:`amoeba_plugin.recovery.RecoveryResult.record` writes them)."""
    records = records if isinstance(records, list) else [records]
    lines = ["## Recovery", "",
             "After pruning, the model was trained to win back quality (amoeba-plugin's `recover`):", ""]
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            continue
        loss = {"distill": "logit distillation (KL to the teacher's logits)", "lm": "next-token (LM) loss",
                "mixed": "distillation mixed with the LM loss"}.get(r.get("loss"), str(r.get("loss")))
        head = f"- Run {n}: " if len(records) > 1 else "- "
        lines.append(f"{head}{_fmt(r.get('tokens'))} tokens of `{r.get('source')}` with {loss}"
                     + (f" from `{r['teacher']}`" if r.get("teacher") else "")
                     + (f", LoRA rank {r['lora_rank']} merged into the weights" if r.get("lora_rank") else
                        ", every weight trained")
                     + (f", peak LR {r['lr']:g}" if isinstance(r.get("lr"), (int, float)) else "")
                     + (f", seed {r['seed']}" if r.get("seed") is not None else ""))
        before, after = r.get("heldout_loss_before"), r.get("heldout_loss_after")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            import math

            lines.append(f"  - held-out perplexity on `{r.get('eval_source')}`: {math.exp(before):.2f} → "
                         f"{math.exp(after):.2f}")
    lines += ["", "The training text is recorded so evaluation refuses it (`amoeba eval` checks it).", ""]
    return "\n".join(lines) + "\n"


__all__ = ["RECOVERED", "TAGS", "UNCHANGED", "hub_id", "model_card", "recovery_section"]
