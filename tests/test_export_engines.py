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


def _heterogeneous_plan(anatomy, *, channels: bool = False) -> Plan:
    """Layer 0 without attention, layer 1 with one KV group of 2 heads, layer 2 without MLP, layer 3 whole."""
    layers = [LayerPlan(0, kv_groups=[], query_heads=[], mlp_channels=list(range(0, 96, 2))),
              LayerPlan(1, kv_groups=[1], query_heads=[[0, 3]], mlp_channels=list(range(40)),
                        head_channels=[0, 1, 4, 5] if channels else None),
              LayerPlan(2, mlp_channels=[]),
              LayerPlan(3)]
    return Plan(layers, source=Plan.full(anatomy).source, output_bias=True)


def _sliced(tied: bool = False, channels: bool = False):
    model = make_tiny("llama", tie_word_embeddings=tied)
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


def test_head_channel_plans_are_refused_in_one_line():
    _, _, _, _, sliced = _sliced(channels=True)
    with pytest.raises(AmoebaError, match="head-channel pruning"):
        decilm_layout(sliced)
    from amoeba_plugin.export.gguf_file import write_gguf

    with pytest.raises(AmoebaError, match="head-channel pruning"):
        write_gguf(sliced, None, "unused.gguf")


def test_engine_exporters_refuse_before_writing(tmp_path):
    model, anatomy, plan, patch, _ = _sliced(channels=True)
    for name in ("decilm", "gguf"):
        with pytest.raises(AmoebaError, match="cannot write this plan"):
            export(name, ExportRequest(model=model, anatomy=anatomy, plan=plan, patch=patch), tmp_path / name)
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
