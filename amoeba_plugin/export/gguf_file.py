"""A GGUF file of a sliced model, written with the ``gguf`` package, for llama.cpp.

Stock Llama models are written as llama.cpp's ``llama`` architecture. Heterogeneous ones (the
``amoeba`` architecture) are written as ``deci``. Its runtime takes per-layer ``head_count``,
``head_count_kv`` and ``feed_forward_length`` arrays of any value, but one head_dim. So, unlike the
DeciLM directory for vLLM, query heads are not padded; what is padded, each checked against
llama.cpp 0.3.36:

* heads that keep a subset of their channels (head-channel plans) are written as whole heads with
  zero rows at the pruned channels (:mod:`.whole_heads`);
* a layer with no attention at layer 0 fails to load: it gets an all-zero one-head stand-in;
* llama.cpp drops a layer's *attention* output when that layer has no MLP (``deci.cpp`` skips the
  layer before adding it): such a layer gets an all-zero MLP of width 1, which adds nothing.

q and k rows are permuted the way llama.cpp's converter does (its RoPE pairs adjacent channels,
transformers' pairs halves). The tokenizer goes in as GPT-2-style BPE (``pre = "gpt-2"``: the
byte-level pre-tokenizer our tokenizers use; llama.cpp's converter rejects vocabularies it has
no hash for, which is why this writer exists).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AmoebaError
from .decilm import layer_shapes, refusal
from .whole_heads import whole_heads

DTYPES = ("f16", "f32")
#: the width of the all-zero MLP that stands in for a missing one (llama.cpp's n_ff == 0 bug)
ZERO_MLP_WIDTH = 1


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotate-half q/k rows to llama.cpp's interleaved pairs (its converter's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind not in ("default", None):
        raise AmoebaError(f"RoPE type '{kind}' is not written to GGUF by amoeba-plugin yet",
                          "export with --exporter hf and convert with llama.cpp's convert_hf_to_gguf.py")
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def _vocab(tokenizer, vocab_size: int):
    """Tokens, token types, merges and the pre-tokenizer name of a byte-level BPE tokenizer."""
    import gguf

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise AmoebaError("GGUF export supports byte-level BPE tokenizers (GPT-2 style) only",
                          "export with --exporter hf and convert with llama.cpp's converter")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            special = added.get(i, {}).get("special")
            types.append(gguf.TokenType.CONTROL if special else
                         gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf(model, tokenizer, path: str | Path, dtype: str = "f16", name: str | None = None) -> dict:
    """Write ``model`` (a sliced stock or amoeba model) and ``tokenizer`` to ``path``; return a report."""
    try:
        import gguf
    except ImportError:
        raise AmoebaError("the gguf exporter needs the 'gguf' package", "pip install 'amoeba-plugin[gguf]'") from None

    if dtype not in DTYPES:
        raise AmoebaError(f"unknown GGUF dtype '{dtype}'", f"use one of {', '.join(DTYPES)}")
    cfg = model.config
    shapes, head_dim = layer_shapes(model)
    reason = refusal(shapes, head_dim, "GGUF")
    if reason:
        raise AmoebaError(f"this model has no GGUF form: {reason}",
                          "export with --exporter amoeba (or hf) for transformers instead")
    if tokenizer is None:
        raise AmoebaError("a GGUF file needs the tokenizer", "export from a model directory that has one")
    stock = cfg.model_type == "llama"
    arch = "llama" if stock else "deci"
    hidden = cfg.hidden_size
    src = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    shapes, src, channel_padding = whole_heads(shapes, src, head_dim)
    wtype = torch.float16 if dtype == "f16" else torch.float32
    writer = gguf.GGUFWriter(str(path), arch)
    stand_ins: list[str] = []
    padding = channel_padding
    if channel_padding:
        stand_ins.append(f"heads that keep a subset of their channels are written as whole heads of {head_dim} "
                         f"(llama.cpp has one head_dim): {channel_padding:,} zero parameters at the pruned channels")

    def tensor(gname: str, t: torch.Tensor, *, matrix: bool = True) -> None:
        writer.add_tensor(gname, t.to(wtype if matrix and t.dim() == 2 else torch.float32).contiguous().numpy())

    heads, kv_heads, widths = [], [], []
    tensor("token_embd.weight", src["model.embed_tokens.weight"])
    tensor("output_norm.weight", src["model.norm.weight"], matrix=False)
    if not cfg.tie_word_embeddings:
        tensor("output.weight", src["lm_head.weight"])
    for i, s in enumerate(shapes):
        pre, blk = f"model.layers.{i}.", f"blk.{i}."
        nq, nkv, ff = s.query_heads, s.kv_heads, s.intermediate_size
        if nq:
            a = pre + "self_attn."
            tensor(blk + "attn_norm.weight", src[pre + "input_layernorm.weight"], matrix=False)
            tensor(blk + "attn_q.weight", _permute(src[a + "q_proj.weight"], nq))
            tensor(blk + "attn_k.weight", _permute(src[a + "k_proj.weight"], nkv))
            tensor(blk + "attn_v.weight", src[a + "v_proj.weight"])
            tensor(blk + "attn_output.weight", src[a + "o_proj.weight"])
            for role, gname, perm in (("q_proj", "attn_q", nq), ("k_proj", "attn_k", nkv),
                                      ("v_proj", "attn_v", None), ("o_proj", "attn_output", None)):
                if a + role + ".bias" in src:
                    b = src[a + role + ".bias"]
                    tensor(blk + gname + ".bias", _permute(b, perm) if perm else b, matrix=False)
        elif i == 0:
            nq = nkv = 1
            zero = torch.zeros(head_dim, hidden)
            tensor(blk + "attn_norm.weight", torch.ones(hidden), matrix=False)
            for gname, t in (("attn_q", zero), ("attn_k", zero), ("attn_v", zero), ("attn_output", zero.T)):
                tensor(blk + gname + ".weight", t)
            padding += 4 * head_dim * hidden + hidden
            stand_ins.append("layer 0 has no attention: an all-zero one-head attention stands in")
        if ff:
            m = pre + "mlp."
            tensor(blk + "ffn_norm.weight", src[pre + "post_attention_layernorm.weight"], matrix=False)
            for role, gname in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                tensor(blk + gname + ".weight", src[m + role + ".weight"])
                if m + role + ".bias" in src:
                    tensor(blk + gname + ".bias", src[m + role + ".bias"], matrix=False)
        elif nq:
            ff = ZERO_MLP_WIDTH
            tensor(blk + "ffn_norm.weight", torch.ones(hidden), matrix=False)
            for gname, t in (("ffn_gate", torch.zeros(ff, hidden)), ("ffn_up", torch.zeros(ff, hidden)),
                             ("ffn_down", torch.zeros(hidden, ff))):
                tensor(blk + gname + ".weight", t)
            padding += 3 * ff * hidden + hidden
            stand_ins.append(f"layer {i} has no MLP: an all-zero MLP of width {ff} stands in "
                             "(llama.cpp drops the attention output of a layer without one)")
        heads.append(nq)
        kv_heads.append(nkv)
        widths.append(ff)

    writer.add_name(name or getattr(cfg, "_name_or_path", "") or "amoeba-plugin export")
    writer.add_block_count(len(shapes))
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(widths[0] if stock else widths)
    writer.add_head_count(heads[0] if stock else heads)
    writer.add_head_count_kv(kv_heads[0] if stock else kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = _vocab(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, value in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch, "dtype": dtype, "zero_parameters_added": padding, "stand_ins": stand_ins,
            "head_count": heads, "head_count_kv": kv_heads, "feed_forward_length": widths}


__all__ = ["DTYPES", "ZERO_MLP_WIDTH", "write_gguf"]
