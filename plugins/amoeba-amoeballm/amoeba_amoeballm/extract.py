"""Instant extraction: the best shape for a budget, its gate computed once, the delta merged, sliced.

Budgets: parameters (all or non-embedding), a count, MACs per token, or measured decode latency
(``latency=0.6`` of the dense model's, ``latency=8ms`` per token) from a table measured once per
machine and stored in the bundle. Decode time is noisy (one measurement moved the shapes that fit
``latency=0.6`` from 6 to 20), so each shape is timed ``repeats`` times, each time right after the
dense model (paired, so a machine getting busier moves both), its ratio is the median of the paired
ratios, its ``spread`` how far those ratios range (max - min over the median), and a table with a
spread over :data:`SPREAD_WARNING` warns. Among the shapes that fit, the one with the best stored score
(loss after fine-tuning) wins; a bundle without scores takes the shape closest to the budget.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from amoeba_plugin.budget import Budget
from amoeba_plugin.errors import AmoebaError, InvalidBudgetError
from amoeba_plugin.plan import Plan
from amoeba_plugin.surgery import slice_model

from .bundle import LATENCY, Bundle
from .shapes import SelectionTable, Shape


# ---------------------------------------------------------------------- latency
#: relative spread of repeated latency ratios above which a latency budget is called uncertain
SPREAD_WARNING = 0.10
LATENCY_REPEATS = 5


def machine_key(device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[str, dict]:
    """A file name and the facts it stands for: what makes a latency table valid on a machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        cpu = torch.cuda.get_device_name(torch.device(device))
    facts = {"device": device, "processor": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
             "dtype": str(dtype).replace("torch.", ""), "system": platform.system()}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{facts['device'].replace(':', '')}-{facts['dtype']}-t{facts['threads']}-{digest}", facts


def decode_ms_per_token(model, prompt: int = 16, tokens: int = 32, repeats: int = 3, vocab: int | None = None) -> float:
    """Median milliseconds per greedily decoded token (KV cache on, batch 1) after one warm-up."""
    return statistics.median(decode_times(model, prompt, tokens, repeats, vocab))


def decode_times(model, prompt: int = 16, tokens: int = 32, repeats: int = 3, vocab: int | None = None,
                 warm_up: bool = True) -> list[float]:
    """Milliseconds per greedily decoded token (KV cache on, batch 1), once per repeat."""
    device = next(model.parameters()).device
    vocab = vocab or model.config.vocab_size
    ids = torch.randint(0, vocab, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False,
              "pad_token_id": model.config.eos_token_id or 0}
    times = []
    with torch.no_grad():
        if warm_up:
            model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            model.generate(ids, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - began) * 1000 / tokens)
    return times


def spread(values: list[float]) -> float:
    """(max - min) / median: how far repeated measurements range, relative to their middle."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def latency_table(bundle: Bundle, model=None, anatomy=None, *, rebuild: bool = False, prompt: int = 16,
                  tokens: int = 32, show_progress: bool = True, repeats: int = LATENCY_REPEATS) -> dict:
    """``{"machine": facts, "dense_ms": x, "ms": {shape: ms}, "ratio": {shape: r}, "spread": {shape: s},
    "max_spread": s, "repeats": n}`` for this machine: read from the bundle, or measured once (every
    shape sliced and timed ``repeats`` times, each right after the dense model) and stored there.
    Warns when the largest spread is over :data:`SPREAD_WARNING`."""
    from amoeba_plugin.progress import progress

    if model is None:
        model, _, anatomy = bundle.load_base()
    device = str(next(model.parameters()).device)
    key, facts = machine_key(device, next(model.parameters()).dtype)
    path = bundle.path / LATENCY / f"{key}.json"
    if path.exists() and not rebuild:
        from amoeba_plugin.statefiles import read_json

        table = read_json(path, "latency table", f"rebuild it: `amoeba amoeballm latency {bundle.path} --rebuild`")
        _warn_if_noisy(table)
        return table
    table = bundle.table
    was_training = model.training
    model.eval()
    decode_times(model, prompt, tokens, repeats=0)  # warm-up
    dense_all, ms, ratio, spreads = [], {}, {}, {}
    shapes = table.shapes()
    for shape in (progress(shapes, "latency table") if show_progress else shapes):
        small = slice_model(model, anatomy, table.plan(shape, anatomy), patch=table.patch(shape, anatomy))
        decode_times(small, prompt, tokens, repeats=0)  # warm-up
        dense, mine = [], []
        for _ in range(repeats):  # paired: dense, then the shape, so drift in load moves both
            dense += decode_times(model, prompt, tokens, repeats=1, warm_up=False)
            mine += decode_times(small, prompt, tokens, repeats=1, warm_up=False)
        ratios = [m / d for m, d in zip(mine, dense)]
        ms[str(shape)] = round(statistics.median(mine), 4)
        ratio[str(shape)] = round(statistics.median(ratios), 4)
        spreads[str(shape)] = round(spread(ratios), 4)
        dense_all += dense
        del small
    model.train(was_training)
    result = {"machine": facts, "prompt_tokens": prompt, "decoded_tokens": tokens, "repeats": repeats,
              "dense_ms": round(statistics.median(dense_all), 4) if dense_all else None,
              "dense_spread": round(spread(dense_all), 4) if dense_all else None,
              "ms": ms, "ratio": ratio, "spread": spreads, "max_spread": max(spreads.values(), default=0.0)}
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    _warn_if_noisy(result)
    return result


def _warn_if_noisy(table: dict) -> None:
    worst = table.get("max_spread")
    if worst is not None and worst > SPREAD_WARNING:
        import warnings

        shape = max(table["spread"], key=table["spread"].get)
        warnings.warn(f"amoeba: latency ratios vary by up to {worst:.0%} between repeats (shape {shape}, "
                      f"{table.get('repeats')} repeats): a latency budget near a shape's ratio is uncertain; "
                      f"measure again on an idle machine (`amoeba amoeballm latency BUNDLE --rebuild --repeats 9`)",
                      RuntimeWarning, stacklevel=3)


def latency_ratio(table: dict, shape) -> float:
    """A shape's decode latency over the dense model's: the median paired ratio (tables built before
    repeats: the ratio of the medians)."""
    if "ratio" in table and str(shape) in table["ratio"]:
        return table["ratio"][str(shape)]
    return table["ms"][str(shape)] / table["dense_ms"]


# ---------------------------------------------------------------------- choosing a shape
@dataclass
class Choice:
    shape: Shape
    reason: str


def shape_rows(table: SelectionTable, anatomy, scores: dict | None = None, latency: dict | None = None) -> list[dict]:
    """Every shape with its parameters, MACs, and (when known) score and latency."""
    full = Plan.full(anatomy)
    p_full, ne_full, m_full = (full.num_parameters(anatomy), full.num_parameters(anatomy, embeddings=False),
                               full.macs_per_token(anatomy))
    rows = []
    for shape in table.shapes():
        plan = table.plan(shape, anatomy)
        p, ne, macs = plan.num_parameters(anatomy), plan.num_parameters(anatomy, embeddings=False), plan.macs_per_token(anatomy)
        row = {"shape": str(shape), "depth": shape.depth, "width": shape.width, "parameters": p,
               "parameters_ratio": round(p / p_full, 4), "non_embedding_ratio": round(ne / ne_full, 4),
               "macs_ratio": round(macs / m_full, 4)}
        if scores and str(shape) in scores:
            row["score"] = scores[str(shape)]
        if latency:
            row["latency_ms"] = latency["ms"].get(str(shape))
            row["latency_ratio"] = round(latency_ratio(latency, shape), 4) if row["latency_ms"] else None
            row["latency_spread"] = latency.get("spread", {}).get(str(shape))
        rows.append(row)
    return rows


def _check_budget_kind(budget: Budget) -> None:
    if budget.kind == "shape":
        raise InvalidBudgetError("an AmoebaLLM bundle holds (depth, width) shapes, not exact head counts",
                                 "pass --shape DEPTHxWIDTH, or a params/nonembed/count/macs/latency budget")


def choose_shape(table: SelectionTable, anatomy, budget: Budget, scores: dict | None = None,
                 latency: dict | None = None) -> Choice:
    """The best shape that meets ``budget`` (see the module docstring for "best")."""
    _check_budget_kind(budget)
    fits, size = [], {}
    bound = budget.bind(anatomy)
    for shape in table.shapes():
        plan = table.plan(shape, anatomy)
        if budget.is_latency:
            if latency is None:
                raise InvalidBudgetError("a latency budget needs this machine's latency table", "build it first (`amoeba amoeballm latency BUNDLE`)")
            if budget.kind == "latency_ms":
                ms = latency["ms"][str(shape)]
                ok, size[shape] = ms <= budget.value, -ms
            else:
                r = latency_ratio(latency, shape)
                ok, size[shape] = r <= budget.value, -r
        else:
            ok, size[shape] = bound.fits(plan), bound.measure(plan)
        if ok:
            fits.append(shape)
    if not fits:
        smallest = min(table.shapes(), key=lambda s: (-size[s] if budget.is_latency else size[s]))
        unit = {"latency_ms": "ms per token", "latency": "of the dense latency"}.get(budget.kind, budget.kind)
        raise InvalidBudgetError(f"no shape of this bundle meets budget {budget}: the smallest, {smallest}, needs "
                                 f"{abs(size[smallest]):.4g} {unit}",
                                 "relax the budget, or build a bundle with a smaller --min-layers or width")
    scored = [s for s in fits if scores and str(s) in scores]
    if scored:
        best = min(scored, key=lambda s: (scores[str(s)], -size[s], -s.depth))
        reason = f"lowest fine-tuned loss ({scores[str(best)]:.4f}) among {len(fits)} shapes that fit"
    else:
        best = max(fits, key=lambda s: (size[s], s.depth))
        reason = f"closest to the budget among {len(fits)} shapes that fit (the bundle has no shape scores)"
    return Choice(best, reason)


# ---------------------------------------------------------------------- extraction
@dataclass
class Extraction:
    model: object
    tokenizer: object
    base: object
    anatomy: object
    plan: Plan
    patch: dict
    shape: Shape
    info: dict


def merged_patch(bundle: Bundle, model, anatomy, shape: Shape) -> tuple[dict, object]:
    """The shape's patch: compensation biases plus, after training, ``W + delta`` for every adapted
    linear of the kept layers (the gate computed once, noise-free). Returns it with the base model
    (peft's wrappers removed again)."""
    table = bundle.table
    patch = dict(table.patch(shape, anatomy))
    if not bundle.trained:
        return patch, model
    adapter = bundle.load_adapter(model, anatomy)
    kept = {anatomy.layer(i).modules[r] for i in table.depth.kept_layers(shape.depth) for r in anatomy.layer(i).modules}
    with torch.no_grad():
        deltas = adapter.deltas(table.encoding(shape).to(next(model.parameters()).device))
        base = adapter.unload()
        state = base.state_dict()
        for name, delta in deltas.items():
            if name.rsplit(".", 1)[0] in kept:
                patch[name] = state[name] + delta.to(state[name].dtype)
    return patch, base


def _record_texts(bundle: Bundle, *records: dict) -> None:
    """The bundle's calibration and training text, and its base model's, into each record."""
    from amoeba_plugin.data import record_seen_text
    from amoeba_plugin.models import resolve_model_path
    from amoeba_plugin.pipeline import inherit_texts

    for record in records:
        for entry in bundle.seen_texts:
            record_seen_text(record, [entry["source"]], entry["role"], by=entry.get("by"))
        try:
            inherit_texts(record, resolve_model_path(bundle.base))
        except AmoebaError:
            pass


def extract(bundle_path, budget: str | Budget | None = None, shape: str | Shape | None = None, *,
            dtype=None, device=None) -> Extraction:
    """Pick the shape (``shape`` or the best for ``budget``), merge, slice; a standalone model."""
    began = time.perf_counter()
    if (budget is None) == (shape is None):
        raise AmoebaError("extraction needs exactly one of a budget and a shape",
                          "pass --budget (e.g. 0.5, nonembed=0.6, macs=0.5, latency=0.6) or --shape DEPTHxWIDTH")
    bundle = Bundle.load(bundle_path)
    table = bundle.table
    if shape is not None:  # bad input fails before the base model loads
        shape = table.check(Shape.parse(shape))
    else:
        budget = Budget.parse(budget)
        _check_budget_kind(budget)
        if bundle.trained and not bundle.shape_scores:  # never pick a shape by size when scores were due
            raise AmoebaError(f"the bundle at {bundle.path} has a fine-tuned adapter but no shape scores "
                              "(its training did not finish)",
                              "rerun `amoeba amoeballm train` on it with the same settings to finish it, or pass --shape")
    model, tokenizer, anatomy = bundle.load_base(dtype=dtype, device=device)
    if shape is not None:
        choice = Choice(shape, "requested")
    else:
        lat = latency_table(bundle, model, anatomy) if budget.is_latency else None
        choice = choose_shape(table, anatomy, budget, bundle.shape_scores, lat)
    chosen = time.perf_counter()
    plan = table.plan(choice.shape, anatomy)
    patch, base = merged_patch(bundle, model, anatomy, choice.shape)
    sliced = slice_model(base, anatomy, plan, patch=patch)
    seconds = time.perf_counter() - began
    info = {"method": "amoeballm", "bundle": str(bundle.path), "base": bundle.base, "shape": str(choice.shape),
            "depth": choice.shape.depth, "width": choice.shape.width, "reason": choice.reason,
            "budget": None if budget is None else str(budget), "fine_tuned": bundle.trained,
            "layers": table.depth.kept_layers(choice.shape.depth), "extraction_seconds": round(seconds, 3),
            "choice_seconds": round(chosen - began, 3), "summary": plan.summary(anatomy)}
    plan.provenance.update(budget=info["budget"], fine_tuned=bundle.trained, bundle=str(bundle.path))
    _record_texts(bundle, info, plan.provenance)
    return Extraction(sliced, tokenizer, base, anatomy, plan, patch, choice.shape, info)


def export_extraction(result: Extraction, destination, exporter: str = "auto", overwrite: bool = False,
                      dtype: str | None = None) -> Path:
    """Write the extracted model with a host exporter (atomic; stock HF when the shape allows)."""
    from amoeba_plugin.export import ExportRequest, export

    request = ExportRequest(model=result.base, anatomy=result.anatomy, plan=result.plan, tokenizer=result.tokenizer,
                            patch=result.patch, info=result.info, sliced=result.model, dtype=dtype)
    return export(exporter, request, destination, overwrite)


__all__ = ["Choice", "Extraction", "choose_shape", "decode_ms_per_token", "export_extraction", "extract",
           "latency_ratio", "latency_table", "machine_key", "merged_patch", "shape_rows", "spread"]
