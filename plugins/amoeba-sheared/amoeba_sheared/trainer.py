"""The training loop shared by pruning and continued pre-training, on plain ``accelerate``.

It runs unchanged in one process or under ``accelerate launch`` with several (gloo on CPU, DDP on
GPUs; FSDP through accelerate's config for users who need it). Every process draws the same global
batch from the :class:`~amoeba_sheared.domains.DomainMixture` and trains on its slice, the gate
samples are seeded from (seed, step, micro-batch) and the dropout RNG from (seed, step), so N
processes of batch b compute what one process of batch N*b computes, and a resumed run continues
exactly where its checkpoint left it. Every ``update_every`` steps the per-domain held-out losses
(split across processes, then summed) update the proportions (:mod:`.dynamic`); they are logged and
checkpointed with the run.

Why not ``transformers.Trainer``: the pruning objective adds a Lagrangian whose multipliers are
maximised in the same optimizer step (a param group with ``maximize=True``), the gate samples must
be reproducible per step, and the mixture's state must resume with the weights.

A run directory holds ``run.json`` (the settings; a resume must match them), ``checkpoint/``
(written atomically), ``log.jsonl`` and, when finished, ``model/`` (an atomic export) and
``summary.json``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.export import atomic_directory, recover_destination
from amoeba_plugin.statefiles import (check_tensors_file, check_torch_file, check_writable, read_json, read_jsonl,
                                      read_tensors, read_torch)

from .config import DataConfig, TrainConfig
from .domains import DomainMixture
from .dynamic import update_proportions

RUN, LOG, CHECKPOINT, MODEL, SUMMARY, REFERENCE = ("run.json", "log.jsonl", "checkpoint", "model", "summary.json",
                                                 "reference.json")
#: settings a resumed run may change
RESUMABLE = {"save_every", "log_every"}


# ---------------------------------------------------------------------- small pieces
def distributed_on_cpu() -> bool:
    """True when a launcher started several processes on a machine without CUDA: accelerate then
    needs ``cpu=True`` to join them with gloo."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def lr_factor(step: int, train: TrainConfig) -> float:
    """Linear warm-up over ``warmup * steps``, then cosine decay to ``min_lr_ratio`` (Composer's
    ``cosine_with_warmup`` with ``alpha_f``)."""
    warm = int(train.warmup * train.steps)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, train.steps - warm)
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-window mean next-token cross-entropy ``[batch]``."""
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), input_ids[:, 1:].reshape(-1),
                          reduction="none")
    return nll.view(input_ids.size(0), -1).mean(1)


def domain_losses(forward, domains, accelerator, batch_size: int = 8) -> list[float]:
    """Mean held-out token loss per domain; each process scores every ``world``-th window, the sums
    are added across processes."""
    rank, world = accelerator.process_index, accelerator.num_processes
    sums = torch.zeros(len(domains), 2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for i, d in enumerate(domains):
            mine = d.heldout[rank::world]
            for start in range(0, len(mine), batch_size):
                batch = mine[start: start + batch_size].to(accelerator.device)
                logits = forward(batch)
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                      batch[:, 1:].reshape(-1), reduction="sum")
                sums[i, 0] += float(nll)
                sums[i, 1] += batch[:, 1:].numel()
    sums = accelerator.reduce(sums, reduction="sum")
    return [float(s / c) for s, c in sums.tolist()]


# ---------------------------------------------------------------------- the run directory
_RUN_FIX = "pass --restart to start the run over (its damaged files are replaced), or choose a new --output"


class RunDir:
    """The files of one run (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path).expanduser().resolve()

    def __truediv__(self, name) -> Path:
        return self.path / name

    def settings(self) -> dict | None:
        """The run's settings, or None when ``run.json`` is missing or is not a Sheared run's marker
        (a damaged marker is one clear error)."""
        settings = read_json(self / RUN, "Sheared run settings", _RUN_FIX, default=None)
        if not isinstance(settings, dict) or settings.get("stage") not in ("pruning", "pretraining") \
                or not {"model", "train", "data"} <= set(settings):
            return None
        return settings

    def state(self) -> dict | None:
        state = read_json(self / CHECKPOINT / "state.json", "Sheared checkpoint state", _RUN_FIX, default=None)
        if state is not None and not isinstance(state.get("step"), int):
            raise AmoebaError(f"Sheared checkpoint state {self / CHECKPOINT / 'state.json'} is damaged (no step)",
                              _RUN_FIX)
        return state

    def check_checkpoint(self) -> None:
        """A checkpoint to resume from is complete and undamaged (checked cheaply, before any model loads)."""
        if self.state() is None:
            return
        check_tensors_file(self / CHECKPOINT / "trainable.safetensors", "Sheared checkpoint", _RUN_FIX)
        check_torch_file(self / CHECKPOINT / "optimizer.pt", "Sheared checkpoint optimizer state", _RUN_FIX)

    def finished(self) -> bool:
        return (self / MODEL / "config.json").is_file()

    def check(self, settings: dict, restart: bool) -> bool:
        """Whether this run resumes; raises when the directory belongs to another run, cannot be written,
        or holds a damaged checkpoint. Writes nothing.

        ``restart`` deletes only a Sheared run of the same stage (its ``run.json`` is the marker), so
        it never empties a directory that holds something else."""
        if self.path.is_file():
            raise AmoebaError(f"{self.path} is a file", "choose a directory for --output")
        check_writable(self.path, "output directory")  # before the model loads, not at the first checkpoint
        if not self.path.exists():
            return False
        old = self.settings()
        if old is not None:  # finish or undo a checkpoint or export a kill interrupted
            for name in (CHECKPOINT, MODEL):
                recover_destination(self / name)
        if old is None:
            if any(self.path.iterdir()):
                raise AmoebaError(f"{self.path} is not empty and holds no Sheared run"
                                  + (", so --restart will not delete anything there" if restart else ""),
                                  "choose a new --output directory")
            return False
        if restart:
            if old.get("stage") != settings.get("stage"):
                raise AmoebaError(f"{self.path} holds a Sheared {old.get('stage', '?')} run, not a "
                                  f"{settings.get('stage')} run, so --restart will not delete it",
                                  "choose a new --output directory")
            return False
        changed = sorted(k for k in set(old) | set(settings)
                         if k not in RESUMABLE and old.get(k) != settings.get(k))
        if changed:
            raise AmoebaError(f"{self.path} holds a run with other settings ({', '.join(changed)})",
                              "resume with the same settings, pass --restart to start over, or choose a new --output")
        if self.finished():
            raise AmoebaError(f"the run in {self.path} has finished (its model is in {self / MODEL})",
                              "use that model, pass --restart to run again, or choose a new --output")
        self.check_checkpoint()
        return True

    def reset(self) -> None:
        for name in (CHECKPOINT, LOG, MODEL, SUMMARY, REFERENCE, RUN):
            p = self / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def log(self, record: dict) -> None:
        with (self / LOG).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return read_jsonl(self / LOG, "Sheared training log", _RUN_FIX, torn_tail_ok=True)


def read_log(path) -> list[dict]:
    return RunDir(path).records()


def save_checkpoint(run: RunDir, named: dict[str, torch.Tensor], optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_file

    with atomic_directory(run / CHECKPOINT, overwrite=True) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in named.items()}, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def load_checkpoint(run: RunDir) -> tuple[dict, dict, dict]:
    tensors = read_tensors(run / CHECKPOINT / "trainable.safetensors", "Sheared checkpoint", _RUN_FIX)
    opt = read_torch(run / CHECKPOINT / "optimizer.pt", "Sheared checkpoint optimizer state", _RUN_FIX)
    return tensors, opt, run.state()


# ---------------------------------------------------------------------- the loop
def train(stage, run: RunDir, train: TrainConfig, data: DataConfig, domains, accelerator, *, resume: bool,
          reference: list[float] | None, proportions: list[float] | None, stop_after: int | None = None,
          show_progress: bool = True) -> dict:
    """Train ``stage`` (see :class:`amoeba_sheared.prune.PruningStage` and
    :class:`amoeba_sheared.pretrain.PretrainingStage`) in ``run``; return a summary of this run."""
    from amoeba_plugin.progress import progress

    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    optimizer = torch.optim.AdamW(stage.param_groups(train), betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train))
    per_step = train.batch_size * world * train.grad_accum
    mixture = DomainMixture(domains, per_step, train.seed, proportions)
    history: list[dict] = []
    start = 0
    if resume:
        tensors, opt_state, state = load_checkpoint(run)
        mine = stage.trainable()
        if set(mine) != set(tensors):
            raise AmoebaError(f"the checkpoint in {run / CHECKPOINT} does not hold this run's trainable tensors",
                              "resume with the same settings, or pass --restart")
        with torch.no_grad():
            for name, p in mine.items():
                p.copy_(tensors[name])
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        mixture.load_state_dict(state["mixture"])
        history, start = state["proportions_history"], int(state["step"])
    wrapped, optimizer = accelerator.prepare(stage.module, optimizer)
    if main:
        run.log({"event": "resume" if start else "start", "step": start, "processes": world, "time": time.time(),
                 "domains": mixture.names, "proportions": mixture.proportions.tolist(),
                 "reference": None if reference is None else dict(zip(mixture.names, reference))})
        if not start:
            history.append({"step": 0, "proportions": mixture.proportions.tolist()})

    end = train.steps if stop_after is None else min(train.steps, start + stop_after)
    steps = range(start, end)
    iterator = progress(steps, f"sheared {stage.kind}", total=len(steps)) if (main and show_progress) else steps
    began, window, tokens = time.perf_counter(), [], 0
    by_domain = torch.zeros(len(domains), 2, dtype=torch.float64)
    done = start
    stage.module.train()
    for step in iterator:
        torch.manual_seed(train.seed * 1_000_003 + step * 101)
        batch, ids = mixture.draw(step)
        total = torch.zeros((), device=accelerator.device)
        for micro in range(train.grad_accum):
            lo = (micro * world + rank) * train.batch_size
            x = batch[lo: lo + train.batch_size].to(accelerator.device)
            gen = torch.Generator().manual_seed(train.seed * 7_000_003 + step * 1_009 + micro)
            last = micro == train.grad_accum - 1
            with accelerator.no_sync(wrapped) if not last else contextlib.nullcontext():
                logits, extra = wrapped(x, gen)
                per_window = token_losses(logits, x)
                loss = per_window.mean() / train.grad_accum
                if last:
                    loss = loss + stage.regulariser(extra, step)
                accelerator.backward(loss)
            total += per_window.detach().mean() / train.grad_accum
            for d, v in zip(ids[lo: lo + train.batch_size].tolist(), per_window.detach().tolist()):
                by_domain[d, 0] += v
                by_domain[d, 1] += 1
        if train.max_grad_norm:
            accelerator.clip_grad_norm_(stage.minimised(), train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stage.after_step()
        window.append(float(accelerator.reduce(total, reduction="mean")))
        tokens += per_step * train.seq_len
        done = step + 1
        if len(domains) > 1 and done % data.update_every == 0 and done < train.steps:
            losses = domain_losses(stage.eval_forward(), domains, accelerator)
            stage.module.train()
            if data.dynamic:
                mixture.set_proportions(update_proportions(mixture.proportions, losses, reference, data.eta,
                                                           data.smoothing, data.clip))
            record = {"step": done, "losses": [round(v, 5) for v in losses], "proportions": mixture.proportions.tolist()}
            history.append(record)
            if main:
                run.log({"event": "proportions", **record, "domains": mixture.names})
        if done % train.log_every == 0 or done == train.steps:
            sums = accelerator.reduce(by_domain.to(accelerator.device), reduction="sum").cpu() if world > 1 else by_domain
            if main:
                run.log({"step": done, "loss": round(sum(window) / len(window), 5), "lr": scheduler.get_last_lr()[0],
                         "train_loss_by_domain": {n: round(float(s / c), 5)
                                                  for n, (s, c) in zip(mixture.names, sums.tolist()) if c},
                         "tokens_per_second": round(tokens / (time.perf_counter() - began), 1),
                         **stage.log_record(done)})
            window, by_domain = [], torch.zeros_like(by_domain)
        if done % train.save_every == 0 or done == train.steps:
            if main:
                save_checkpoint(run, stage.trainable(), optimizer, scheduler,
                                {"step": done, "mixture": mixture.state_dict(), "proportions_history": history})
            accelerator.wait_for_everyone()
    return {"steps": done, "of_steps": train.steps, "resumed_from": start, "processes": world,
            "seconds_this_run": round(time.perf_counter() - began, 1), "final_proportions": mixture.proportions.tolist(),
            "proportions_history": history, "domains": mixture.names}


__all__ = ["CHECKPOINT", "LOG", "MODEL", "REFERENCE", "RUN", "RunDir", "SUMMARY", "distributed_on_cpu", "domain_losses",
           "lr_factor", "read_log", "token_losses", "train"]
