"""The recovery loop: :func:`recover` heals a pruned model on plain ``accelerate``.

It runs unchanged in one process (CPU, float32: the normal case) or under ``accelerate launch`` with
several (gloo on CPU, DDP on GPUs). Every process draws the same global batch (seeded from the step
and the data position) and trains on its slice, so N processes of ``batch_size / N`` windows compute
what one process computes; dropout is seeded from (seed, step); the held-out windows are split across
processes and their sums added. A checkpoint holds the weights (or the LoRA adapters), the optimizer,
the schedule, the RNG, the data position, the mixture and the log, so a run killed at any point and
started again with the same ``run_dir`` ends with the same weights, bit for bit, as one never stopped.

Why not ``transformers.Trainer``: recovery needs a second model's logits per batch, a token budget
rather than epochs, a domain mixture whose proportions change between steps and must resume with the
weights, and one code path for stock and ``amoeba``-architecture students.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import AmoebaError, DataError
from .checkpoint import RecoveryRun, model_signature, set_rng_state
from .config import RecoveryConfig, coerce
from .losses import objective
from .mixture import DomainBatches, check_heldout, load_domains, training_specs, update_proportions


@dataclass
class RecoveryResult:
    """What :func:`recover` returns. ``log`` holds one dict per logged step: ``step``, ``tokens``,
    ``train_loss``, ``lm_loss`` (and ``distill_loss``), ``lr``, ``tokens_per_s``, and where measured
    ``heldout_loss`` / ``heldout_ppl`` (the first record, step 0, is the held-out loss before training)
    and ``proportions`` (a mixture's, after an update)."""

    model: Any
    log: list[dict]
    tokens: int
    wall_s: float
    config: RecoveryConfig | None = None
    steps: int = 0
    #: the step this call started from (0, or the checkpoint it resumed)
    resumed_from: int = 0
    #: training texts, canonical ``name:split``
    sources: list[str] = field(default_factory=list)

    @property
    def heldout(self) -> list[dict]:
        """The log records that carry a held-out loss, in order."""
        return [r for r in self.log if "heldout_loss" in r]

    def record(self, teacher: str | None = None) -> dict:
        """The provenance record of this recovery (model card, ``amoeba_export.json``): what it trained
        on, how long, with which loss, and the held-out loss before and after."""
        cfg = self.config
        held = self.heldout
        out = {"tokens": self.tokens, "steps": self.steps, "loss": cfg.loss if cfg else None,
               "source": ",".join(self.sources), "sources": list(self.sources),
               "eval_source": cfg.eval_source if cfg else None, "lora_rank": cfg.lora_rank if cfg else None,
               "lr": cfg.peak_lr if cfg else None, "seed": cfg.seed if cfg else None,
               "wall_s": round(self.wall_s, 1)}
        if teacher is not None:
            out["teacher"] = teacher
        if held:
            out["heldout_loss_before"] = held[0]["heldout_loss"]
            out["heldout_loss_after"] = held[-1]["heldout_loss"]
        if cfg is not None:
            out["config"] = cfg.to_dict()
        return out


# ---------------------------------------------------------------------- small pieces
def distributed_on_cpu() -> bool:
    """True when a launcher started several processes on a machine without CUDA: accelerate then
    needs ``cpu=True`` to join them with gloo."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def lr_factor(step: int, steps: int, warmup: float, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup * steps``, then cosine (or linear) decay to ``min_ratio``, or constant."""
    warm = int(warmup * steps)
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, steps - warm))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def window_losses(model, windows: torch.Tensor, accelerator, batch_size: int = 8) -> float:
    """Mean next-token loss of ``model`` over ``windows`` (split across processes, sums added)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mine = windows[rank::world]
            for start in range(0, len(mine), batch_size):
                batch = mine[start: start + batch_size].to(accelerator.device)
                logits = _logits(model, batch)
                sums[0] += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                                 batch[:, 1:].reshape(-1), reduction="sum"))
                sums[1] += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    if world > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    return float(sums[0] / sums[1])


def _vocab(model) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return int(head.weight.shape[0]) if head is not None and getattr(head, "weight", None) is not None else None


def _check_models(student, teacher, config: RecoveryConfig) -> None:
    if not isinstance(student, torch.nn.Module) or not hasattr(student, "config"):
        raise AmoebaError(f"the student must be a Hugging Face causal LM, got {type(student).__name__}",
                          "pass the pruned model (a PreTrainedModel)")
    if config.needs_teacher and teacher is None:
        raise AmoebaError(f"loss={config.loss} needs a teacher and none was given",
                          "pass the source model as the teacher, or use loss=lm")
    if teacher is None or not config.needs_teacher:
        return
    sv, tv = _vocab(student), _vocab(teacher)
    if sv is not None and tv is not None and sv != tv:
        raise AmoebaError(f"the teacher's vocabulary ({tv} tokens) differs from the student's ({sv})",
                          "distil from the model the student was pruned from, or use loss=lm")
    teacher_storage = {p.untyped_storage().data_ptr() for p in teacher.parameters()}
    if any(p.untyped_storage().data_ptr() in teacher_storage for p in student.parameters()):
        raise AmoebaError("the student shares weight storage with the teacher, so training would change the teacher",
                          "pass a sliced copy as the student (slice_model copies), or a separately loaded teacher")


def _wrap_lora(student, config: RecoveryConfig):
    """peft LoRA on every linear projection of the decoder (not the LM head)."""
    from peft import LoraConfig, get_peft_model

    head = student.get_output_embeddings()
    targets = sorted(name for name, m in student.named_modules()
                     if type(m) is torch.nn.Linear and m is not head)
    if not targets:
        raise AmoebaError("the student has no torch.nn.Linear projections for LoRA",
                          "load the model unquantized, or use lora_rank=0")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or 2 * config.lora_rank, lora_dropout=0.0,
                      target_modules=targets, bias="none")
    with _peft_quiet():
        return get_peft_model(student, lora)


@contextlib.contextmanager
def _peft_quiet():
    """peft calls a transformers API deprecated in v5; the warning is noise for our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class _Bar:
    """The progress display: a tqdm bar (tokens/s and the running held-out loss in its postfix) and
    throttled ``amoeba_on_progress`` events, as :mod:`amoeba_plugin.progress` shows every long stage."""

    STAGE = "recover"

    def __init__(self, total: int, start: int, enabled: bool):
        from ..progress import bars_disabled, report

        self.total, self.report = total, report
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=self.STAGE, unit="step", disable=bars_disabled(),
                            file=sys.stderr, leave=False, dynamic_ncols=True)
        report(self.STAGE, start, total)

    def update(self, step: int, text: str) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(text, refresh=False)
        self.report(self.STAGE, step, self.total, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_text(config: RecoveryConfig):
    """``(training specs, held-out spec or None)`` of ``config``, each resolved once: training splits
    only, and held-out text that is not training text. Needs no model, so callers run it first."""
    from ..data import TextSpec

    config = coerce(config)
    training = training_specs(config.source)
    evaluation = TextSpec.resolve(config.eval_source, "evaluation") if config.eval_source else None
    check_heldout(training, evaluation)
    return training, evaluation


# ---------------------------------------------------------------------- the loop
def recover(student, teacher, tokenizer, config: RecoveryConfig | dict | str, run_dir: str | os.PathLike | None = None,
            progress: Callable[[dict], None] | bool | None = None) -> RecoveryResult:
    """Heal ``student`` (a pruned causal LM, stock or ``amoeba`` architecture) in place and return it.

    ``teacher`` is the model it was pruned from (None is fine for ``loss="lm"``); ``tokenizer`` cuts the
    training and held-out text. With ``run_dir`` the run checkpoints there and a second call with the
    same settings resumes where the last checkpoint left off (a finished run returns at once with the
    same weights). ``progress``: None or True shows a bar with tokens/s and the running held-out loss
    (and fires ``amoeba_on_progress``); False only fires the events; a callable is also called with
    every log record. With ``lora_rank > 0`` the adapters are merged at the end (``merge_and_unload``),
    so ``result.model`` is a plain model of the student's class.
    """
    from accelerate import Accelerator

    from ..data import eval_windows

    config = coerce(config)
    _check_models(student, teacher, config)
    if tokenizer is None:
        raise DataError("recovery needs a tokenizer to cut its training text and none was given",
                        "pass the pruned model's tokenizer")
    training, evaluation = check_text(config)
    if config.proportions is not None and len(config.proportions) != len(training):
        raise AmoebaError("proportions must give one weight per source", "pass one number per source")

    run = RecoveryRun(run_dir) if run_dir is not None else None
    resume = run.prepare(config, model_signature(student)) if run is not None else False

    accelerator = Accelerator(cpu=distributed_on_cpu())
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if config.batch_size % world:
        raise AmoebaError(f"batch_size={config.batch_size} does not split over {world} processes",
                          f"pass a batch_size that is a multiple of {world}")
    per_process = config.batch_size // world
    device = accelerator.device

    mixture = len(training) > 1
    domains = load_domains(tokenizer, training, config.seq_len, config.mixture_windows if mixture else 0)
    batches = DomainBatches(domains, config.batch_size, config.seed, config.proportions)
    heldout = eval_windows(tokenizer, evaluation, config.seq_len, config.eval_windows) if evaluation else None

    steps = config.steps
    eval_every = config.every(config.eval_every)
    update_every = config.every(config.update_every) or eval_every or max(1, steps // 4)
    save_every = config.every(config.save_every) or eval_every or max(1, steps // 4)

    if device.type == "cpu" and next(student.parameters()).dtype in (torch.float16, torch.bfloat16):
        student.float()  # CPU training in half precision loses the small updates: float32 on CPU
    # train where accelerate puts the work (a GPU when there is one), then give both models back where
    # they were: the teacher is usually the caller's shared source model
    homes = (next(student.parameters()).device, next(teacher.parameters()).device if teacher is not None else None)
    student.to(device)
    if teacher is not None and config.needs_teacher:
        teacher.to(device).eval()
    torch.manual_seed(config.seed)
    flags = {id(p): p.requires_grad for p in student.parameters()}
    if config.lora_rank:
        model = _wrap_lora(student, config)
    else:
        model = student
        model.requires_grad_(True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.peak_lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, config.warmup, config.schedule, config.min_lr_ratio))

    log: list[dict] = []
    start, wall, reference = 0, 0.0, None
    if resume:
        tensors, extra, state = run.load(run.latest())
        if set(tensors) != set(trainable):
            raise AmoebaError(f"the checkpoint in {run.path} does not hold this run's trainable tensors",
                              "resume with the same settings and student, or pass a new run_dir")
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(tensors[name].to(p.device, p.dtype))
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        set_rng_state(extra["rng"])
        batches.load_state_dict(state["mixture"])
        log, start, wall, reference = state["log"], int(state["step"]), float(state["wall_s"]), state["reference"]

    wrapped, optimizer = accelerator.prepare(model, optimizer)
    plain = accelerator.unwrap_model(wrapped)
    began = time.perf_counter()

    def heldout_loss() -> float:
        return window_losses(plain, heldout, accelerator)

    def domain_losses(m) -> list[float]:
        return [window_losses(m, d.heldout, accelerator) for d in domains]

    if not resume:
        if heldout is not None:
            loss0 = heldout_loss()
            log.append({"step": 0, "tokens": 0, "heldout_loss": round(loss0, 6), "heldout_ppl": round(math.exp(loss0), 4)})
        if mixture:
            reference = domain_losses(teacher if (teacher is not None and config.needs_teacher) else plain)
            log.append({"step": 0, "tokens": 0, "reference_losses": [round(v, 6) for v in reference],
                        "proportions": batches.proportions.tolist()})

    bar = _Bar(steps, start, enabled=progress is not False and main)
    last_heldout = next((r["heldout_loss"] for r in reversed(log) if "heldout_loss" in r), None)
    session_tokens = 0
    wrapped.train()
    try:
        for step in range(start, steps):
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout, if the model has any
            batch, _ = batches.draw(step)
            x = batch[rank * per_process: (rank + 1) * per_process].to(device)
            logits = wrapped(input_ids=x, use_cache=False).logits
            target = None
            if config.needs_teacher:
                with torch.no_grad():
                    target = _logits(teacher, x)
            loss, parts = objective(config.loss, logits, target, x, config.temperature, config.lm_weight)
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            session_tokens += config.tokens_per_step
            values = torch.tensor([float(loss.detach()), *parts.values()], dtype=torch.float64, device=device)
            if world > 1:
                values = accelerator.reduce(values, reduction="mean")
            elapsed = time.perf_counter() - began
            record = {"step": done, "tokens": done * config.tokens_per_step, "train_loss": round(float(values[0]), 6),
                      **{k: round(float(v), 6) for k, v in zip(parts, values[1:].tolist())}, "lr": lr,
                      "tokens_per_s": round(session_tokens / max(elapsed, 1e-9), 1)}
            if mixture and config.dynamic and done % update_every == 0 and done < steps:
                losses = domain_losses(plain)
                batches.set_proportions(update_proportions(batches.proportions, losses, reference))
                record.update(domain_losses=[round(v, 6) for v in losses], proportions=batches.proportions.tolist())
            if heldout is not None and (done == steps or (eval_every and done % eval_every == 0)):
                last_heldout = heldout_loss()
                record.update(heldout_loss=round(last_heldout, 6), heldout_ppl=round(math.exp(last_heldout), 4))
            wrapped.train()
            if done % config.log_every == 0 or done == steps or "heldout_loss" in record or "proportions" in record:
                log.append(record)
                if callable(progress) and main:
                    progress(dict(record))
            text = f"{record['tokens_per_s']:.0f} tok/s, loss {record['train_loss']:.4f}" + \
                (f", held-out {last_heldout:.4f}" if last_heldout is not None else "")
            bar.update(done, text)
            if run is not None and (done % save_every == 0 or done == steps):
                if main:
                    run.save(done, {n: p for n, p in trainable.items()}, optimizer, scheduler,
                             {"step": done, "tokens": done * config.tokens_per_step, "mixture": batches.state_dict(),
                              "reference": reference, "log": log,
                              "wall_s": wall + time.perf_counter() - began})
                accelerator.wait_for_everyone()
    finally:
        bar.close()

    wall += time.perf_counter() - began
    model = accelerator.unwrap_model(wrapped)
    if config.lora_rank:
        with _peft_quiet():
            model = model.merge_and_unload()
    for p in model.parameters():  # the student's own requires_grad flags, as they were
        p.requires_grad_(flags.get(id(p), True))
    model.eval()
    model.to(homes[0])
    if teacher is not None:
        teacher.to(homes[1])
    return RecoveryResult(model=model, log=log, tokens=steps * config.tokens_per_step, wall_s=wall, config=config,
                          steps=steps, resumed_from=start, sources=[str(s) for s in training])


__all__ = ["RecoveryResult", "check_text", "distributed_on_cpu", "lr_factor", "recover", "window_losses"]
