"""Pre-train the embedded default model ``amoeba-tiny-sotu`` from scratch.

Why: the main job and every test must run with no hub. This script makes the shipped model
reproducible: a byte-level BPE (8,192 tokens) trained on the SOTU *train* split only, then a
small Llama with grouped-query attention trained for a fixed number of steps on the same split.
Held-out SOTU, Brown and Moby-Dick perplexities are printed at the end and stored in
``training_log.json`` next to the weights (fp16 safetensors).

Usage: ``python scripts/train_embedded_model.py [--steps 500] [--out amoeba_plugin/weights/amoeba-tiny-sotu]``
"""
from __future__ import annotations

import argparse
import json
import lzma
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "amoeba_plugin" / "data" / "corpora"
SEQ = 256
ARCH = dict(vocab_size=8192, hidden_size=256, intermediate_size=640, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
            rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0)


def documents(name: str) -> list[str]:
    with lzma.open(CORPORA / f"{name}.jsonl.xz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=ARCH["vocab_size"], min_frequency=2,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", model_max_length=ARCH["max_position_embeddings"])


def token_stream(tok, texts: list[str]) -> torch.Tensor:
    return torch.tensor(tok("\n\n".join(texts))["input_ids"], dtype=torch.long)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, windows: int) -> float:
    model.eval()
    n = min(windows, ids.numel() // SEQ)
    x = ids[: n * SEQ].view(n, SEQ)
    nll, count = 0.0, 0
    for i in range(0, n, 16):
        batch = x[i:i + 16]
        out = model(input_ids=batch, labels=batch)
        nll += out.loss.item() * batch.numel() - out.loss.item() * batch.shape[0]
        count += batch.numel() - batch.shape[0]
    model.train()
    return math.exp(nll / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "amoeba_plugin" / "weights" / "amoeba-tiny-sotu")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    train_texts = documents("sotu_train")
    t0 = time.time()
    tok = train_tokenizer(train_texts)
    print(f"tokenizer: {len(tok)} tokens in {time.time() - t0:.1f}s")
    train_ids = token_stream(tok, train_texts)
    held_out = {name: token_stream(tok, documents(name)) for name in ("sotu_valid", "brown", "moby_dick")}

    config = LlamaConfig(**ARCH, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    gen = torch.Generator().manual_seed(args.seed)
    log, t0 = [], time.time()
    model.train()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, train_ids.numel() - SEQ - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s:s + SEQ] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == args.steps:
            rate = step * args.batch * SEQ / (time.time() - t0)
            entry = {"step": step, "loss": round(loss.item(), 4), "tokens_per_s": round(rate)}
            if step % 100 == 0 or step == args.steps:
                entry["sotu_valid_ppl_16k"] = round(perplexity(model, held_out["sotu_valid"], 64), 2)
            log.append(entry)
            print(json.dumps(entry), flush=True)
    final = {name: round(perplexity(model, ids, 400), 2) for name, ids in held_out.items()}
    print("final held-out perplexity (400 x 256 tokens):", final)

    args.out.mkdir(parents=True, exist_ok=True)
    model.config.torch_dtype = "float16"
    model.to(torch.float16).save_pretrained(args.out)
    tok.save_pretrained(args.out)
    (args.out / "training_log.json").write_text(json.dumps({
        "steps": args.steps, "batch": args.batch, "seq_len": SEQ, "lr": args.lr, "seed": args.seed,
        "train_tokens": args.steps * args.batch * SEQ, "wall_s": round(time.time() - t0, 1),
        "train_corpus": "sotu_train", "held_out_ppl": final, "log": log}, indent=1))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
