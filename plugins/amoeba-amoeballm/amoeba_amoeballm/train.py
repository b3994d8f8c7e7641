"""One-for-all fine-tuning: sandwich sampling, in-place distillation, loss-magnitude balancing.

Every optimizer step draws K subnets (the largest, ``num_random`` random ones, the smallest). Each
micro-batch runs them in that order with one backward each (one graph held at a time): the largest
learns from the labels and its detached logits teach the others (soft cross-entropy over the same
positions the labels score, i.e. the mask is shifted like the labels: the official code forgot);
with balancing every subnet's loss is rescaled to the largest one's value (``loss * ref / loss``).

The loop is plain ``accelerate``: it runs unchanged in one process or under ``accelerate launch``
with several (gloo on CPU, NCCL/DDP on GPUs). Why not ``transformers.Trainer``: a micro-batch here
needs several backward passes, the experts are several peft adapters plus a router (Trainer's
checkpointing restores one active adapter), and resumption must reproduce the sampled shapes.
Every random draw (shapes, batches, router noise, dropout) is seeded from (seed, step), so a resumed
run continues exactly where the checkpoint left it.
"""
from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.export import atomic_directory, recover_destination
from amoeba_plugin.options import Options, option

from .bundle import CHECKPOINT, Bundle
from .shapes import SelectionTable, Shape, apply_shape
from .smol import SMoLAdapter, SMoLConfig

LOG = "train_log.jsonl"


@dataclass
class TrainConfig(Options):
    """Fine-tuning settings (the official recipe in brackets, for a 7B model on a GPU)."""

    steps: int = option(200, "optimizer steps [10000]")
    batch_size: int = option(4, "windows per process and micro-batch [2]")
    grad_accum: int = option(1, "micro-batches per optimizer step [4]")
    lr: float = option(2e-4, "learning rate, constant [2e-4]")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(0.3, "gradient clipping norm")
    seq_len: int = option(256, "tokens per training window")
    source: str = option("sotu:train", "training text [alpaca-gpt4]")
    pool: int = option(2048, "training windows drawn (seeded) from the source")
    num_random: int = option(2, "random subnets per step besides the largest and the smallest [2]")
    full_depth_random: bool = option(True, "random subnets may keep every layer (the official draw never trains "
                                           "full-depth narrow shapes: randint(min, L))")
    distill: bool = option(True, "in-place distillation for every subnet but the largest")
    kd_weight: float = option(1.0, "distillation share of a distilled subnet's loss (the rest: labels) [1]")
    balancing: bool = option(True, "loss-magnitude balancing")
    save_every: int = option(50, "steps between checkpoints")
    log_every: int = option(10, "steps between log lines")
    seed: int = option(0, "seed of the shapes, batches, router noise and dropout")
    score_windows: int = option(8, "windows (seed + 1) for the per-shape scores written at the end")

    def __post_init__(self):
        super().__post_init__()
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "pool", "save_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AmoebaError(f"{name} must be a positive integer, got {value!r}", f"set {name} to 1 or more")
        if self.num_random < 0 or not 0 <= self.kd_weight <= 1 or self.lr <= 0:
            raise AmoebaError("num_random must be >= 0, kd_weight in [0, 1] and lr > 0",
                              "use e.g. num_random=2, kd_weight=1, lr=2e-4")


# ---------------------------------------------------------------------- losses
def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of position t predicting labels[t+1] (labels -100 are ignored)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy to the teacher's distribution over the positions the labels score: the
    logits at t are compared where labels[t+1] is not -100 (shifted like the labels)."""
    mask = (labels[:, 1:] != -100).float()
    s = F.log_softmax(student[:, :-1].float(), -1)
    t = F.softmax(teacher[:, :-1].float(), -1)
    per_token = -(t * s).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def sandwich(table: SelectionTable, step: int, seed: int, num_random: int,
             full_depth_random: bool = True) -> list[Shape]:
    """The step's subnets: the largest, ``num_random`` random ones (widths without replacement, as
    the official code draws them) and the smallest.

    The official code draws random depths below the full one (``randint(min, L)``), so a full-depth
    shape narrower than the largest is never trained, although it is often the best shape for a
    budget: on the embedded model that left the 8-layer shapes worse after fine-tuning than before
    (benchmarks/README.md). Here random depths include the full one; ``full_depth_random=False``
    restores the official draw."""
    rng = random.Random(seed * 1_000_003 + step)
    depths = table.depth.depths()
    if not full_depth_random:
        depths = [d for d in depths if d < table.depth.num_layers] or depths
    widths = rng.sample(table.widths, min(num_random, len(table.widths)))
    widths += [rng.choice(table.widths) for _ in range(num_random - len(widths))]
    return [table.largest, *(Shape(rng.choice(depths), w) for w in widths), table.smallest]


# ---------------------------------------------------------------------- data
class WindowBatches:
    """Seeded, resumable batches of training windows: batch (step, micro, rank) is always the same."""

    def __init__(self, windows: torch.Tensor, batch_size: int, grad_accum: int, world: int, seed: int):
        self.windows, self.batch_size, self.grad_accum, self.world, self.seed = windows, batch_size, grad_accum, world, seed
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(len(self.windows), generator=torch.Generator().manual_seed(self.seed + epoch))}
        return self._orders[epoch]

    def get(self, step: int, micro: int, rank: int) -> torch.Tensor:
        start = ((step * self.grad_accum + micro) * self.world + rank) * self.batch_size
        rows = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, len(self.windows))
            rows.append(int(self._order(epoch)[offset]))
        return self.windows[rows]


def training_windows(tokenizer, config: TrainConfig) -> torch.Tensor:
    from amoeba_plugin.api import get_calibration_dataset

    return get_calibration_dataset(tokenizer, config.source, config.pool, config.seq_len, config.seed)


# ---------------------------------------------------------------------- checkpoint
def _save_checkpoint(directory: Path, adapter: SMoLAdapter, optimizer, step: int, config: TrainConfig,
                     smol: SMoLConfig) -> None:
    """Trainable tensors, optimizer state and the step, written with the host's atomic directory
    writer (a kill at any point leaves the previous or the new checkpoint; the next run recovers)."""
    from safetensors.torch import save_file

    with atomic_directory(directory, overwrite=True) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in adapter.trainable_parameters()},
                  str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": config.to_dict(), "smol": smol.to_dict()},
                                                   indent=1))


_CHECKPOINT_FIX = "pass --restart to start the training over (the damaged checkpoint is replaced)"


def read_checkpoint(directory: Path) -> dict | None:
    """The checkpoint's state (step, settings), None when there is none; damage is one clear error."""
    from amoeba_plugin.statefiles import read_json

    recover_destination(directory)  # finish or undo a checkpoint write a kill interrupted
    state = read_json(Path(directory) / "state.json", "training checkpoint state", _CHECKPOINT_FIX, default=None)
    if state is not None and (not isinstance(state.get("step"), int) or not isinstance(state.get("config"), dict)
                              or not isinstance(state.get("smol"), dict)):
        raise AmoebaError(f"training checkpoint state {Path(directory) / 'state.json'} is damaged "
                          "(no step, config or smol)", _CHECKPOINT_FIX)
    return state


def read_checkpoint_tensors(directory: Path) -> tuple[dict, dict]:
    """The checkpoint's trainable tensors and optimizer state, read (and so checked) before any model loads."""
    from amoeba_plugin.statefiles import read_tensors, read_torch

    directory = Path(directory)
    return (read_tensors(directory / "trainable.safetensors", "training checkpoint", _CHECKPOINT_FIX),
            read_torch(directory / "optimizer.pt", "training checkpoint optimizer state", _CHECKPOINT_FIX))


_RESUMABLE = {"steps", "save_every", "log_every", "score_windows"}  # may change between runs


def _check_resume(state: dict, config: TrainConfig, smol: SMoLConfig) -> None:
    old = {k: v for k, v in state["config"].items() if k not in _RESUMABLE}
    new = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
    changed = sorted(k for k in new if old.get(k) != new[k])
    if state["smol"] != smol.to_dict():
        changed.append("smol (experts, rank, top-k, mixing, ...)")
    if changed:
        raise AmoebaError(f"the checkpoint in this bundle was trained with other settings ({', '.join(changed)})",
                          "resume with the same settings, or pass --restart to start over")


# ---------------------------------------------------------------------- the loop
class _Subnet(torch.nn.Module):
    """What DDP wraps: the peft model and the router, so the gate is computed inside the forward."""

    def __init__(self, adapter: SMoLAdapter):
        super().__init__()
        self.adapter = adapter
        self.peft = adapter.model
        self.router = adapter.router

    def forward(self, input_ids, encoding):
        self.adapter.set_shape(encoding)
        return self.peft(input_ids=input_ids, use_cache=False).logits


def _distributed_on_cpu() -> bool:
    """True when a launcher started several processes on a machine without CUDA: accelerate then
    needs ``cpu=True`` to join them with gloo (``accelerate launch --multi_gpu`` and ``torchrun``
    set WORLD_SIZE but leave that to the script)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _log(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train_bundle(bundle_path, config: TrainConfig | None = None, smol: SMoLConfig | None = None, *,
                 restart: bool = False, stop_after: int | None = None, show_progress: bool = True) -> dict:
    """Fine-tune the bundle's SMoL adapter one-for-all; resume from its checkpoint when there is one.

    ``stop_after`` ends this run after that many steps (as an interruption would; the checkpoint
    holds the last ``save_every`` multiple). Returns a summary (also written to the manifest)."""
    from accelerate import Accelerator

    from amoeba_plugin.progress import progress

    config = config or TrainConfig()
    smol = smol or SMoLConfig()
    accelerator = Accelerator(cpu=_distributed_on_cpu())
    bundle = Bundle.load(bundle_path)
    from amoeba_plugin.statefiles import check_writable

    check_writable(bundle.path, "bundle")  # training writes its checkpoint and adapter there: fail before loading
    table = bundle.table
    ckpt = bundle.path / CHECKPOINT
    state = None if restart else read_checkpoint(ckpt)
    if state is not None:
        _check_resume(state, config, smol)
        if state["step"] >= config.steps and bundle.trained and bundle.shape_scores:
            raise AmoebaError(f"this bundle is already trained for {state['step']} steps",
                              f"pass --steps above {state['step']} to train longer, or --restart")
        saved, optimizer_state = read_checkpoint_tensors(ckpt)  # a damaged checkpoint fails before the model loads
    model, tokenizer, anatomy = bundle.load_base()
    if tokenizer is None:
        raise AmoebaError(f"the base model '{bundle.base}' has no tokenizer", "save one next to the model")
    model.to(accelerator.device)
    adapter = SMoLAdapter.create(model, anatomy, smol, table.encoding_dim, seed=config.seed)
    params = adapter.trainable_parameters()
    named = dict(params)
    optimizer = torch.optim.AdamW([p for _, p in params], lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if state is not None:
        unknown = sorted(set(saved) - set(named))
        if unknown:
            raise AmoebaError(f"the training checkpoint in {ckpt} holds tensors this adapter does not have "
                              f"({', '.join(unknown[:3])}...)", _CHECKPOINT_FIX)
        with torch.no_grad():
            for name, tensor in saved.items():
                named[name].copy_(tensor)
        optimizer.load_state_dict(optimizer_state)
        start = int(state["step"])
    elif accelerator.is_main_process and restart:
        shutil.rmtree(ckpt, ignore_errors=True)
        (bundle.path / LOG).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    wrapped, optimizer = accelerator.prepare(_Subnet(adapter), optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    batches = WindowBatches(training_windows(tokenizer, config), config.batch_size, config.grad_accum, world, config.seed)
    encodings = {s: table.encoding(s).to(accelerator.device) for s in table.shapes()}
    log_path = bundle.path / LOG
    main = accelerator.is_main_process
    if main and start:
        _log(log_path, {"event": "resume", "step": start, "time": time.time()})

    adapter.train()
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    steps = range(start, end)
    iterator = progress(steps, "one-for-all fine-tuning", total=len(steps)) if (main and show_progress) else steps
    began, window = time.perf_counter(), []
    step = start
    try:
        for step in iterator:
            # router noise and dropout: the same on every process, so N processes of batch b compute
            # exactly what one process of batch N*b computes (the same windows, in the same order)
            torch.manual_seed(config.seed * 1_000_003 + step * 101)
            shapes = sandwich(table, step, config.seed, config.num_random, config.full_depth_random)
            losses = torch.zeros(len(shapes), device=accelerator.device)
            for micro in range(config.grad_accum):
                batch = batches.get(step, micro, rank).to(accelerator.device)
                labels = batch
                teacher = ref = None
                for i, shape in enumerate(shapes):
                    last = micro == config.grad_accum - 1 and i == len(shapes) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(wrapped):
                        with apply_shape(adapter.base_model, anatomy, table, shape):
                            logits = wrapped(batch, encodings[shape])
                        if i == 0 or not config.distill:
                            loss = causal_lm_loss(logits, labels)
                        else:
                            loss = config.kd_weight * distillation_loss(logits, teacher, labels)
                            if config.kd_weight < 1:
                                loss = loss + (1 - config.kd_weight) * causal_lm_loss(logits, labels)
                        if i == 0:
                            teacher, ref = logits.detach(), loss.detach()
                        losses[i] += loss.detach() / config.grad_accum
                        if config.balancing and i > 0:
                            loss = loss * ref / loss.detach()
                        # every trainable parameter takes part in every backward (a zero term), so DDP
                        # needs no unused-parameter search and 1 and N processes behave the same
                        zero = sum(p.sum() for _, p in params) * 0.0
                        accelerator.backward(loss / config.grad_accum + zero)
                    del logits
            if config.max_grad_norm:
                accelerator.clip_grad_norm_([p for _, p in params], config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses = accelerator.reduce(losses, reduction="mean")
            window.append(losses.cpu())
            done = step + 1
            if main and (done % config.log_every == 0 or done == config.steps):
                mean = torch.stack(window).mean(0)
                _log(log_path, {"step": done, "shapes": [str(s) for s in shapes],
                                "loss": [round(float(v), 5) for v in losses],
                                "mean_loss_by_position": [round(float(v), 5) for v in mean],
                                "seconds": round(time.perf_counter() - began, 2)})
                window = []
            if done % config.save_every == 0 or done == config.steps:
                if main:
                    _save_checkpoint(ckpt, adapter, optimizer, done, config, smol)
                accelerator.wait_for_everyone()
            step = done
    except KeyboardInterrupt:
        if main:
            _log(log_path, {"event": "interrupted", "step": step, "time": time.time()})
        raise
    seconds = time.perf_counter() - began
    summary = {"steps": step, "of_steps": config.steps, "resumed_from": start, "processes": world,
               "seconds_this_run": round(seconds, 1), "config": config.to_dict(), "smol": smol.to_dict()}
    if step >= config.steps and main:
        adapter.eval()
        from amoeba_plugin.api import get_calibration_dataset
        from amoeba_plugin.data import record_seen_text

        windows = get_calibration_dataset(tokenizer, config.source, config.score_windows, config.seq_len, config.seed + 1)
        scores = score_shapes(adapter.base_model, anatomy, table, windows, adapter)
        seen = record_seen_text({"data": dict(bundle.manifest.get("data") or {})}, [config.source], "training",
                                by="amoeballm")["data"]
        # the adapter, its scores and the text it saw land together or not at all (a rerun finishes)
        bundle.update_manifest(adapter=adapter, smol=smol.to_dict(), training=summary, shape_scores=scores, data=seen)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def score_shapes(model, anatomy, table: SelectionTable, windows: torch.Tensor, adapter=None,
                 shapes: list[Shape] | None = None) -> dict[str, float]:
    """Mean LM loss of every shape (or of ``shapes``) on ``windows``: the signal extraction uses to
    pick the best shape under a budget (training-source windows: a ranking signal, never a reported
    score)."""
    from amoeba_plugin.metrics.loss import lm_loss

    scores = {}
    with torch.no_grad():
        for shape in table.shapes() if shapes is None else shapes:
            if adapter is not None:
                adapter.set_shape(table.encoding(shape).to(next(model.parameters()).device))
            with apply_shape(model, anatomy, table, shape):
                scores[str(shape)] = round(float(lm_loss(model, windows, batch_size=8)), 5)
    return scores


def read_log(bundle_path) -> list[dict]:
    from amoeba_plugin.statefiles import read_jsonl

    return read_jsonl(Path(bundle_path) / LOG, "training log", torn_tail_ok=True)


def lora_finetune(model, tokenizer, config: TrainConfig, rank: int = 8, alpha: float = 16.0):
    """Plain peft LoRA (a one-expert SMoL adapter: the same linears, peft's own forward) on ``model``
    for ``config.steps`` steps on the same batches the one-for-all run sees, then merged: the
    per-subnet and baseline fine-tuning of the benchmarks (the paper fine-tunes each baseline with
    LoRA on the same data and steps)."""
    from amoeba_plugin.anatomy import anatomy_of

    adapter = SMoLAdapter.create(model, anatomy_of(model), SMoLConfig(num_experts=1, rank=rank, alpha=alpha, top_k=1),
                                 encoding_dim=1, seed=config.seed)
    params = [p for _, p in adapter.trainable_parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batches = WindowBatches(training_windows(tokenizer, config), config.batch_size, config.grad_accum, 1, config.seed)
    adapter.train()
    device = next(model.parameters()).device  # trains where the model is
    for step in range(config.steps):
        torch.manual_seed(config.seed * 1_000_003 + step * 101)
        for micro in range(config.grad_accum):
            batch = batches.get(step, micro, 0).to(device)
            loss = causal_lm_loss(adapter.model(input_ids=batch, use_cache=False).logits, batch)
            (loss / config.grad_accum).backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return adapter.model.merge_and_unload().eval()


__all__ = ["TrainConfig", "causal_lm_loss", "distillation_loss", "lora_finetune", "read_log", "sandwich",
           "score_shapes", "train_bundle"]
