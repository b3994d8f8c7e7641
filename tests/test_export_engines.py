"""Engine exporters without the engines: the DeciLM padding is exact, the GGUF file holds what it
should, shapes no engine can run are refused in one line, exports keep the source dtype, and a plan
reproduces its export with the patch saved beside it. (Runs in the engines themselves: tests/engines.)"""
from __future__ import annotations

import json

import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.arch import AmoebaConfig, AmoebaForCausalLM
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.export import ExportRequest, export
from amoeba_plugin.export.decilm import common_query_heads, decilm_layout, LayerShape
from amoeba_plugin.export.patch import PATCH_FILE, load_plan
from amoeba_plugin.plan import LayerPlan, Plan
from amoeba_plugin.surgery import slice_model
from amoeba_plugin.testing import embedded_tokenizer, make_tiny


#: head channels of the tiny models (head_dim 8: RoPE pairs j, j + 4): one list for every head, and
#: one list per kept KV group (the Search backend's shape)
CHANNELS = {"shared": ([0, 1, 4, 5], [2, 6]), "per-group": ([0, 1, 4, 5], [[1, 5], [0, 2, 3, 4, 6, 7]])}


def _heterogeneous_plan(anatomy, *, channels: str | None = None) -> Plan:
    """Layer 0 without attention, layer 1 with one KV group of 2 heads, layer 2 without MLP, layer 3
    whole; ``channels`` also prunes head channels in layers 1 and 3 (see ``CHANNELS``)."""
    one, three = CHANNELS[channels] if channels else (None, None)
    layers = [LayerPlan(0, kv_groups=[], query_heads=[], mlp_channels=list(range(0, 96, 2))),
              LayerPlan(1, kv_groups=[1], query_heads=[[0, 3]], mlp_channels=list(range(40)), head_channels=one),
              LayerPlan(2, mlp_channels=[]),
              LayerPlan(3, head_channels=three)]
    return Plan(layers, source=Plan.full(anatomy).source, output_bias=True)


def _sliced(tied: bool = False, channels: str | None = None, family: str = "llama"):
    model = make_tiny(family, tie_word_embeddings=tied)
    anatomy = anatomy_of(model)
    plan = _heterogeneous_plan(anatomy, channels=channels)
    torch.manual_seed(1)
    patch = {f"model.layers.{i}.mlp.down_proj.bias": torch.randn(64) * 0.1 for i in (0, 1, 3)}
    return model, anatomy, plan, patch, slice_model(model, anatomy, plan, patch=patch, prefer="amoeba")


def _from_layout(layout) -> AmoebaForCausalLM:
    """The DeciLM layout read back as a padded amoeba model (every layer with the common head count)."""
    c = layout.config
    specs = []
    for block in c["block_configs"]:
        attn, ffn = block["attention"], block["ffn"]
        heads = 0 if attn["no_op"] else c["num_attention_heads"]
        specs.append({"num_attention_heads": heads,
                      "num_key_value_heads": heads // attn["n_heads_in_group"] if heads else 0,
                      "head_dim": c["head_dim"] if heads else 0,
                      "intermediate_size": 0 if ffn["no_op"] else ffn["intermediate_size"],
                      "qkv_bias": c["qkv_bias"] and bool(heads), "o_bias": c["attention_bias"] and bool(heads),
                      "mlp_bias": c["mlp_bias"] and not ffn["no_op"], "down_bias": c["mlp_bias"] and not ffn["no_op"]})
    cfg = AmoebaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], head_dim=c["head_dim"],
                       num_hidden_layers=len(specs), layer_specs=specs, rms_norm_eps=c["rms_norm_eps"],
                       rope_parameters=c.get("rope_parameters"), tie_word_embeddings=c["tie_word_embeddings"],
                       max_position_embeddings=c["max_position_embeddings"])
    model = AmoebaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(layout.state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)
    model.tie_weights()
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_decilm_padding_is_exact(tied):
    _, _, _, _, sliced = _sliced(tied)
    layout = decilm_layout(sliced)
    blocks = layout.config["block_configs"]
    assert layout.config["num_attention_heads"] == 8  # the source's 64 / 8, which divides 1 and 2 KV heads
    assert blocks[0]["attention"] == {"no_op": False, "replace_with_linear": False, "n_heads_in_group": 8}
    assert blocks[1]["attention"]["n_heads_in_group"] == 8 and blocks[2]["ffn"]["no_op"]
    assert layout.config["mlp_bias"] and not layout.config["qkv_bias"]
    assert layout.padding > 0
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = sliced(ids).logits, _from_layout(layout)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_common_query_heads_divides_every_layer():
    shapes = [LayerShape(9, 3, 64, 10), LayerShape(6, 2, 64, 10), LayerShape(3, 1, 64, 10)]
    assert common_query_heads(shapes, 576, 64) == 12  # 9 does not split among 2 KV heads
    assert common_query_heads([LayerShape(9, 3, 64, 10), LayerShape(3, 1, 64, 10)], 576, 64) == 9


def _numel(state: dict) -> int:
    return sum(t.numel() for k, t in state.items() if k != "lm_head.weight")


def _channel_zeros(sliced, hidden: int, head_dim: int = 8) -> int:
    """Zeros that writing ``sliced``'s head-channel layers as whole heads adds (q, k, v rows and o
    columns of every pruned channel, and the q/k/v bias entries)."""
    zeros = 0
    for spec in sliced.config.layer_specs:
        channels = spec["head_channels"]
        if not spec["num_key_value_heads"] or channels is None:
            continue
        groups = channels if isinstance(channels[0], list) else [channels] * spec["num_key_value_heads"]
        per_group = spec["num_attention_heads"] // spec["num_key_value_heads"]
        rows = sum((2 * per_group + 2) * (head_dim - len(c)) for c in groups)  # q + o, k + v
        bias = sum((per_group + 2) * (head_dim - len(c)) for c in groups) if spec["qkv_bias"] else 0
        zeros += rows * hidden + bias
    return zeros


@pytest.mark.parametrize("channels,family", [("shared", "llama"), ("per-group", "llama"), ("per-group", "qwen2")])
def test_head_channel_plans_pad_exactly(channels, family):
    """Pruned head channels come back as zero rows at their source positions: same logits (RoPE
    frequencies and the attention scale kept), one head_dim, and the padding report counts every zero."""
    _, _, _, _, sliced = _sliced(channels=channels, family=family)
    assert any(s["head_channels"] for s in sliced.config.layer_specs)
    layout = decilm_layout(sliced)
    assert layout.config["head_dim"] == 8
    assert layout.config["qkv_bias"] == (family == "qwen2")
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = sliced(ids).logits, _from_layout(layout)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert _numel(layout.state) == _numel(sliced.state_dict()) + layout.padding
    zeros = _channel_zeros(sliced, 64)
    assert any(f"{zeros:,} zero parameters at the pruned channels" in note for note in layout.notes)
    assert layout.padding > zeros  # the query-head padding of layer 1 and layer 0's stand-in come on top


def test_head_channel_padding_places_channels_at_their_source_positions():
    from amoeba_plugin.export.whole_heads import whole_heads
    from amoeba_plugin.export.decilm import layer_shapes

    _, _, _, _, sliced = _sliced(channels="per-group")
    shapes, head_dim = layer_shapes(sliced)
    state = sliced.state_dict()
    padded_shapes, padded, zeros = whole_heads(shapes, state, head_dim)
    assert [s.head_channels for s in padded_shapes] == [None] * 4 and padded_shapes[3].head_dim == 8
    k, v = padded["model.layers.3.self_attn.k_proj.weight"], padded["model.layers.3.self_attn.v_proj.weight"]
    assert k.shape == v.shape == (16, 64)
    kept = [1, 5] + [8 + c for c in (0, 2, 3, 4, 6, 7)]  # group 0 keeps [1, 5], group 1 six channels
    torch.testing.assert_close(k[kept], state["model.layers.3.self_attn.k_proj.weight"])
    assert not k[[r for r in range(16) if r not in kept]].any() and not v[[r for r in range(16) if r not in kept]].any()
    q, o = padded["model.layers.3.self_attn.q_proj.weight"], padded["model.layers.3.self_attn.o_proj.weight"]
    assert q.shape == (64, 64) and o.shape == (64, 64)
    q_kept = [h * 8 + c for h in range(4) for c in (1, 5)] + [32 + h * 8 + c for h in range(4) for c in (0, 2, 3, 4, 6, 7)]
    torch.testing.assert_close(o[:, q_kept], state["model.layers.3.self_attn.o_proj.weight"])
    assert zeros == _numel(padded) - _numel(state) == _channel_zeros(sliced, 64)


def test_engine_exporters_refuse_before_writing(tmp_path):
    model = make_tiny("qwen3")  # q/k norms: neither engine format has them
    anatomy = anatomy_of(model)
    plan = Plan([LayerPlan(lp.index, mlp_channels=list(range(48))) for lp in anatomy.layers],
                source=Plan.full(anatomy).source)
    for name in ("decilm", "gguf"):
        with pytest.raises(AmoebaError, match="cannot write this plan.*q/k norms"):
            export(name, ExportRequest(model=model, anatomy=anatomy, plan=plan, tokenizer=embedded_tokenizer()),
                   tmp_path / name)
        assert not (tmp_path / name).exists()


def test_gguf_holds_exact_per_layer_shapes(tmp_path):
    gguf = pytest.importorskip("gguf")
    from amoeba_plugin.export.gguf_file import _permute, write_gguf

    model = make_tiny("llama", vocab_size=8192)
    anatomy = anatomy_of(model)
    sliced = slice_model(model, anatomy, _heterogeneous_plan(anatomy), prefer="amoeba")
    report = write_gguf(sliced, embedded_tokenizer(), tmp_path / "m.gguf", dtype="f32")
    assert report["architecture"] == "deci"
    assert report["head_count"] == [1, 2, 8, 8] and report["head_count_kv"] == [1, 1, 2, 2]
    assert report["feed_forward_length"] == [48, 40, 1, 96]  # layer 2: the zero MLP stand-in
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "deci" and fields["deci.attention.head_count"] == [1, 2, 8, 8]
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    tensors = {t.name: t for t in reader.tensors}
    q = torch.from_numpy(tensors["blk.1.attn_q.weight"].data.copy()).reshape(16, 64)
    state = sliced.state_dict()
    torch.testing.assert_close(q, _permute(state["model.layers.1.self_attn.q_proj.weight"], 2))
    assert not tensors["blk.0.attn_q.weight"].data.any()  # layer 0's stand-in is all zero


def test_gguf_of_a_head_channel_plan_has_whole_heads(tmp_path):
    gguf = pytest.importorskip("gguf")
    from amoeba_plugin.export.gguf_file import _permute

    model = make_tiny("llama", vocab_size=8192)
    anatomy = anatomy_of(model)
    plan = _heterogeneous_plan(anatomy, channels="per-group")
    out = export("gguf", ExportRequest(model=model, anatomy=anatomy, plan=plan, tokenizer=embedded_tokenizer(),
                                       dtype="float32"), tmp_path / "g")
    info = json.loads((out / "amoeba_export.json").read_text())
    assert info["head_count"] == [1, 2, 8, 8] and info["head_count_kv"] == [1, 1, 2, 2]
    sliced = slice_model(model, anatomy, plan, prefer="amoeba")
    zeros = _channel_zeros(sliced, 64)
    stand_ins = 4 * 8 * 64 + 64 + 3 * 64 + 64  # layer 0's attention, layer 2's MLP of width 1
    assert info["zero_parameters_added"] == zeros + stand_ins
    assert any("whole heads of 8" in note for note in info["stand_ins"])
    reader = gguf.GGUFReader(out / "model.gguf")
    assert reader.fields["deci.attention.key_length"].contents() == 8
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    q = tensors["blk.3.attn_q.weight"].reshape(64, 64)
    src = sliced.state_dict()["model.layers.3.self_attn.q_proj.weight"]
    q_kept = [h * 8 + c for h in range(4) for c in (1, 5)] + [32 + h * 8 + c for h in range(4) for c in (0, 2, 3, 4, 6, 7)]
    whole = torch.zeros(64, 64)
    whole[q_kept] = src
    torch.testing.assert_close(q, _permute(whole, 8))
    assert tuple(tensors["blk.1.attn_k.weight"].shape) == (8, 64)  # one KV head of the whole head_dim


def test_export_keeps_the_source_dtype(tmp_path):
    from safetensors import safe_open

    model = make_tiny("llama")
    model.amoeba_stored_dtype = "float16"  # as load_model records for an fp16 checkpoint
    anatomy = anatomy_of(model)
    plan = _heterogeneous_plan(anatomy)
    for dtype, want in ((None, torch.float16), ("float32", torch.float32)):
        out = export("amoeba", ExportRequest(model=model, anatomy=anatomy, plan=plan, dtype=dtype), tmp_path / str(dtype))
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {want}
        assert json.loads((out / "config.json").read_text())["dtype"] == str(want).removeprefix("torch.")
        assert str(want).removeprefix("torch.") in (out / "README.md").read_text()
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast


def test_plan_reproduces_its_export_with_the_patch(tmp_path):
    model, anatomy, plan, patch, _ = _sliced()
    plan.provenance = {"method": "flap"}
    first = export("amoeba", ExportRequest(model=model, anatomy=anatomy, plan=plan, patch=patch), tmp_path / "a")
    assert (first / PATCH_FILE).is_file()
    again_plan, again_patch = load_plan(first)
    second = export("amoeba", ExportRequest(model=model, anatomy=anatomy, plan=again_plan, patch=again_patch),
                    tmp_path / "b")
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    lone = tmp_path / "lone.json"
    lone.write_text((first / "plan.json").read_text())
    with pytest.raises(AmoebaError, match="'flap' also changed weights"):
        load_plan(lone)
    assert load_plan(lone, ignore_patch=True)[1] is None
