"""Subnet scorers: how good is the model with this plan applied? The fitness of a search, the
knowledge-preservation score of a depth DP.

A scorer is a callable ``scorer(model, anatomy, subnet) -> float`` with ``name``, ``higher_is_better``
and ``describe() -> dict`` (recorded with the results). ``subnet`` is a :class:`~amoeba_plugin.plan.Plan`
or the indices of the kept layers (whole layers). Each scorer applies the subnet softly
(:func:`amoeba_plugin.surgery.apply_soft`), so a search tries thousands of subnets on one model
without copying weights.

* :class:`LossScorer` / :class:`PerplexityScorer`: LM loss / perplexity on calibration windows.
* :class:`LMEvalScorer`: accuracy on an lm-eval task or group, on a fixed, seeded, stratified draw of
  questions (a group scores the macro average over its subtasks), so every candidate sees the same
  questions.
* :class:`EvaluatorScorer`: one number from any registered :class:`~amoeba_plugin.eval.Evaluator`,
  e.g. the one a plugin returns from ``amoeba_select_evaluator``.

:func:`build_scorer` makes one from a spec: ``loss``, ``perplexity`` or ``lm-eval:TASK``.
"""
from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import torch

from ..errors import AmoebaError
from ..metrics.loss import lm_loss
from ..plan import LayerPlan, Plan, source_info
from ..surgery import apply_soft

#: questions per evaluation in AmoebaLLM's official recipe (40 batches of 8 MMLU questions)
DEFAULT_QUESTIONS = 320
SPECS = ("loss", "perplexity", "lm-eval:TASK")


def layer_plan(anatomy, kept_layers) -> Plan:
    """The plan keeping whole layers ``kept_layers`` (and nothing else pruned)."""
    kept = [int(i) for i in kept_layers]
    return Plan(layers=[LayerPlan(i) for i in kept], source=source_info(anatomy),
                provenance={"method": "kept-layers"})


def as_plan(anatomy, subnet) -> Plan:
    """``subnet`` as a plan: a :class:`Plan` as it is, kept layer indices as whole layers."""
    return subnet if isinstance(subnet, Plan) else layer_plan(anatomy, subnet)


class _SoftScorer:
    """``scorer(model, anatomy, subnet)`` applies the subnet softly and scores it with
    :meth:`score_model`, which scores a model as it is (a sliced subnet, say)."""

    name = ""
    higher_is_better = False

    def __call__(self, model, anatomy, subnet) -> float:
        with apply_soft(model, anatomy, as_plan(anatomy, subnet)):
            return self.score_model(model)

    score = __call__

    def score_model(self, model) -> float:
        """The score of ``model`` itself, in eval mode (its training mode is restored)."""
        was_training = model.training
        model.eval()
        try:
            return float(self.measure(model))
        finally:
            model.train(was_training)

    def measure(self, model) -> float:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


def _check_windows(windows, what: str) -> torch.Tensor:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype != torch.long or \
            windows.shape[0] < 1 or windows.shape[1] < 2:
        raise AmoebaError(f"the '{what}' scorer needs calibration windows (a LongTensor [n, seq_len], n >= 1, "
                          f"seq_len >= 2), got {type(windows).__name__}",
                          "pass amoeba_plugin.api.get_calibration_dataset(tokenizer, 'sotu:train', n, seq_len, seed)")
    return windows


class LossScorer(_SoftScorer):
    """Mean next-token loss of the subnet on calibration windows (lower is better)."""

    name = "loss"
    higher_is_better = False

    def __init__(self, windows: torch.Tensor, batch_size: int = 8):
        self.windows = _check_windows(windows, self.name)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise AmoebaError(f"batch_size must be a positive integer, got {batch_size!r}", "pass e.g. batch_size=8")
        self.batch_size = batch_size

    def measure(self, model) -> float:
        return lm_loss(model, self.windows, self.batch_size)

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha1(self.windows.numpy().tobytes()).hexdigest()[:12]
        return {"name": self.name, "higher_is_better": self.higher_is_better, "windows": int(self.windows.shape[0]),
                "seq_len": int(self.windows.shape[1]), "batch_size": self.batch_size, "windows_sha1": digest}


class PerplexityScorer(LossScorer):
    """``exp(loss)`` on calibration windows (lower is better; ranks subnets exactly as the loss does)."""

    name = "perplexity"

    def measure(self, model) -> float:
        return math.exp(super().measure(model))


# ---------------------------------------------------------------------- lm-eval
def stratified_indices(sizes: dict[str, int], num_questions: int, seed: int) -> dict[str, list[int]]:
    """Seeded question indices per (sub)task. One task: ``num_questions`` drawn at random. Several (a
    group): the same number from each, ``num_questions // len(sizes)`` capped by the smallest subtask.
    Each subtask has its own generator (seeded by ``seed`` and its name), so adding a subtask does not
    change the others' draws."""
    if not sizes:
        raise AmoebaError("no task to draw questions from", "name an lm-eval task or group")
    if not isinstance(num_questions, int) or isinstance(num_questions, bool) or num_questions < 1:
        raise AmoebaError(f"num_questions must be a positive integer, got {num_questions!r}",
                          f"pass e.g. num_questions={DEFAULT_QUESTIONS}")
    empty = sorted(name for name, size in sizes.items() if size < 1)
    if empty:
        raise AmoebaError(f"task {empty[0]} has no test documents", "pick a task with a test split")
    if num_questions < len(sizes):
        raise AmoebaError(f"num_questions={num_questions} is fewer than the {len(sizes)} subtasks, so a draw "
                          "stratified over subtasks cannot take one from each",
                          f"pass num_questions >= {len(sizes)}")
    per = min(num_questions // len(sizes), *sizes.values())
    out = {}
    for name in sorted(sizes):
        rng = random.Random(f"{seed}:{name}")
        out[name] = sorted(rng.sample(range(sizes[name]), per))
    return out


class LMEvalScorer(_SoftScorer):
    """Accuracy of the subnet on an lm-eval multiple-choice task (or group), through the registered
    ``lm-eval`` evaluator, on a fixed seeded stratified draw of questions; a group scores the macro
    average over its subtasks (as the official code does for MMLU).

    Calibrate on text the final evaluation does not use: ``amoeba_sotu_cloze_calib`` (from
    ``sotu:train``) rather than ``amoeba_sotu_cloze`` (held out); lm-eval's ``mmlu`` draws from its
    *test* split, so to keep MMLU test held out point a task copy's ``test_split`` at ``validation``
    (the official DP calibrates on MMLU validation) and pass its folder as ``include_path``.
    """

    name = "lm-eval"

    def __init__(self, tokenizer, task: str, num_questions: int = DEFAULT_QUESTIONS, seed: int = 0,
                 metric: str = "acc", num_fewshot: int | None = None, batch_size: int | str = 16,
                 include_path=None, max_length: int | None = None, higher_is_better: bool = True):
        if tokenizer is None:
            raise AmoebaError("the lm-eval scorer needs the model's tokenizer", "pass the tokenizer load_model returns")
        if not isinstance(task, str) or not task.strip() or "," in task:
            raise AmoebaError(f"the lm-eval scorer takes one task or group name, got {task!r}",
                              "pass e.g. task='amoeba_sotu_cloze_calib' (a group such as mmlu is one name)")
        if not isinstance(num_questions, int) or isinstance(num_questions, bool) or num_questions < 1:
            raise AmoebaError(f"num_questions must be a positive integer, got {num_questions!r}",
                              f"pass e.g. num_questions={DEFAULT_QUESTIONS}")
        self.tokenizer, self.task = tokenizer, task.strip()
        self.num_questions, self.seed, self.metric = num_questions, int(seed), metric
        self.num_fewshot, self.batch_size = num_fewshot, batch_size
        self.include_path, self.max_length = include_path, max_length
        self.higher_is_better = bool(higher_is_better)
        self._samples: dict[str, list[int]] | None = None
        self._sizes: dict[str, int] | None = None

    def subtask_sizes(self) -> dict[str, int]:
        """Test documents per leaf task of ``task`` (itself when it is a single task)."""
        if self._sizes is None:
            from .lm_eval import quiet_lm_eval, task_manager

            with quiet_lm_eval():
                loaded = task_manager([self.task], self.include_path).load([self.task])
            self._sizes = {name: len(t.eval_docs) for name, t in loaded["tasks"].items()}
        return dict(self._sizes)

    def samples(self) -> dict[str, list[int]]:
        """The question indices per leaf task, drawn once (every DP evaluation sees the same)."""
        if self._samples is None:
            self._samples = stratified_indices(self.subtask_sizes(), self.num_questions, self.seed)
        return {k: list(v) for k, v in self._samples.items()}

    def measure(self, model) -> float:
        from ..plugins import get

        samples = self.samples()
        result = get("evaluators", "lm-eval")(
            model, self.tokenizer, tasks=[self.task], samples=samples, num_fewshot=self.num_fewshot,
            batch_size=self.batch_size, seed=self.seed, include_path=self.include_path, max_length=self.max_length,
            bootstrap_iters=0)
        return self.aggregate(result, samples)

    def aggregate(self, result: dict, samples: dict[str, list[int]]) -> float:
        """Macro average of ``metric`` over the leaf tasks (the value itself for one task)."""
        values = []
        for leaf in sorted(samples):
            metrics = result["results"].get(leaf, {})
            if self.metric not in metrics:
                raise AmoebaError(f"lm-eval reported no '{self.metric}' for {leaf} (it has: "
                                  f"{', '.join(sorted(metrics)) or 'nothing'})",
                                  "pass metric= one of those (multiple-choice tasks report acc and acc_norm)")
            values.append(float(metrics[self.metric]))
        return sum(values) / len(values)

    def describe(self) -> dict[str, Any]:
        samples = self.samples()
        return {"name": self.name, "task": self.task, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "num_questions": sum(len(v) for v in samples.values()), "subtasks": len(samples),
                "per_subtask": len(next(iter(samples.values()))), "seed": self.seed, "num_fewshot": self.num_fewshot,
                "aggregation": "macro average over subtasks" if len(samples) > 1 else "mean",
                "max_length": self.max_length}


def check_spec(spec: str | None, what: str = "scorer") -> str:
    """The normalised scorer spec, or the error for an unknown one (cheap: nothing is built).
    ``what`` names the scorer's role in the error (``"depth scorer"``, ``"fitness"``)."""
    spec = "loss" if spec is None else str(spec).strip()
    kind, _, task = spec.partition(":")
    if spec in ("loss", "perplexity") or (kind == "lm-eval" and task):
        return spec
    if kind == "lm-eval":
        raise AmoebaError(f"the lm-eval {what} needs a task: lm-eval:TASK",
                          "pass e.g. lm-eval:amoeba_sotu_cloze_calib or lm-eval:mmlu")
    raise AmoebaError(f"unknown {what} '{spec}'", f"use one of: {', '.join(SPECS)}")


def check_spec_task(spec: str | None, what: str = "scorer", include_path=None) -> str:
    """:func:`check_spec`, and for ``lm-eval:TASK`` also that lm-eval knows TASK (the packaged tasks,
    ``include_path``, then lm-eval's own): an unknown task fails here, before any model loads or
    calibrates, naming the closest task names."""
    spec = check_spec(spec, what)
    kind, _, task = spec.partition(":")
    if kind == "lm-eval":
        from .lm_eval import task_manager

        task_manager([task], include_path)
    return spec


def build_scorer(spec: str, model, tokenizer, anatomy, calibration_windows, seed: int = 0, what: str = "scorer",
                 **options):
    """A scorer from a spec: ``"loss"`` (default), ``"perplexity"`` or ``"lm-eval:TASK"``. ``options`` go
    to its constructor (``batch_size``; for lm-eval also ``num_questions``, ``metric``, ``num_fewshot``,
    ``include_path``, ``max_length``). ``model`` and ``anatomy`` are for scorers that need them at build
    time; the built-in ones take them per call."""
    spec = check_spec(spec, what)
    kind, _, task = spec.partition(":")
    try:
        if spec in ("loss", "perplexity"):
            cls = LossScorer if spec == "loss" else PerplexityScorer
            return cls(calibration_windows, **options)
        return LMEvalScorer(tokenizer, task, seed=seed, **options)
    except TypeError as exc:
        raise AmoebaError(f"the '{spec}' scorer does not take these options ({exc})",
                          "check the scorer's options (see amoeba_plugin.eval.scorers)") from None


class EvaluatorScorer(_SoftScorer):
    """One number (``key``) of what a registered :class:`~amoeba_plugin.eval.Evaluator` returns for the
    subnet: how a plugin's ``amoeba_select_evaluator`` answer becomes a fitness. ``options`` go to
    every ``evaluate`` call (fix the data there, so every candidate is scored on the same text)."""

    def __init__(self, evaluator, tokenizer=None, key: str | None = None, higher_is_better: bool | None = None,
                 **options):
        if not callable(getattr(evaluator, "evaluate", None)):
            raise AmoebaError(f"{evaluator!r} is not an Evaluator (it has no evaluate method)",
                              "return an amoeba_plugin.eval.Evaluator from amoeba_select_evaluator")
        self.evaluator, self.tokenizer, self.options = evaluator, tokenizer, options
        self.name = getattr(evaluator, "name", "") or type(evaluator).__name__
        self.key = key or getattr(evaluator, "fitness_key", None) or "perplexity"
        if higher_is_better is None:
            higher_is_better = getattr(evaluator, "higher_is_better", self.key not in ("perplexity", "loss"))
        self.higher_is_better = bool(higher_is_better)

    def measure(self, model) -> float:
        result = self.evaluator.evaluate(model, self.tokenizer, **self.options)
        if not isinstance(result, dict) or self.key not in result:
            got = ", ".join(sorted(result)) if isinstance(result, dict) else type(result).__name__
            raise AmoebaError(f"the evaluator '{self.name}' returned no '{self.key}' (it returned: {got})",
                              "set the evaluator's fitness_key attribute, or pass the key of the number to use")
        value = result[self.key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AmoebaError(f"the evaluator '{self.name}' returned {value!r} as '{self.key}', not a number",
                              "return a float under that key")
        return float(value)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "higher_is_better": self.higher_is_better,
                "options": {k: v for k, v in self.options.items() if isinstance(v, (int, float, str, bool))}}


__all__ = ["EvaluatorScorer", "LMEvalScorer", "LossScorer", "PerplexityScorer", "as_plan", "build_scorer",
           "check_spec", "check_spec_task", "layer_plan", "stratified_indices"]
