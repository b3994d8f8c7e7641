"""Exporters: stock and amoeba exports reload with the masked model's logits, refusals leave nothing
behind, writes are atomic, and every export carries plan.json, a model card and amoeba_export.json.

Tiny models (amoeba_plugin.testing): 4 layers, hidden 64, 8 query heads in 2 KV groups (4 per group), head_dim 8,
MLP 96.
"""
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import amoeba_plugin  # noqa: F401  (registers the `amoeba` architecture with the Auto classes)
from amoeba_plugin import plugins
from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.export import Exporter, ExportRequest, export
from amoeba_plugin.hookspecs import hookimpl
from amoeba_plugin.plan import LayerPlan, Plan, source_info
from amoeba_plugin.surgery import apply_soft, slice_model
from amoeba_plugin.testing import FAMILIES, make_tiny, registered_plugin

INFO = {"method": "uniform-magnitude", "budget": "params=0.6", "seed": 3, "calibration": "sotu:train",
        "source_model": "example-org/tiny-llama", "perplexity_before": 12.25, "perplexity_after": 15.5}


def _channels(n, seed):
    return sorted(random.Random(seed).sample(range(96), n))


def uniform_plan(anatomy, **kw):
    """2 of 4 query heads in each KV group, 50 MLP channels, layer 2 dropped: the stock config fits."""
    kw.setdefault("provenance", {"method": "uniform-magnitude", "metric": "magnitude"})
    return Plan([LayerPlan(i, query_heads=[[0, 3], [1, 2]], mlp_channels=_channels(50, i)) for i in (0, 1, 3)],
                source=source_info(anatomy), **kw)


def mixed_plan(anatomy, **kw):
    """Different MLP widths per layer and one KV group removed in layer 1: only amoeba fits."""
    return Plan([LayerPlan(0, mlp_channels=_channels(40, 0)),
                 LayerPlan(1, kv_groups=[1], mlp_channels=_channels(70, 1)),
                 LayerPlan(3, query_heads=[[0, 1], [2, 3]], mlp_channels=_channels(30, 3))],
                source=source_info(anatomy), **kw)


def _tiny(family="llama", **kw):
    model = make_tiny(family, **kw)
    return model, anatomy_of(model)


@torch.no_grad()
def _soft_logits(model, anatomy, plan, ids, patch=None):
    with apply_soft(model, anatomy, plan, patch):
        return model(ids).logits


def _no_leftovers(parent):
    left = [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert not left, f"temporary directories left behind: {left}"


def _model_type(directory):
    return json.loads((directory / "config.json").read_text())["model_type"]


# ---------------------------------------------------------------------------------------- stock (hf)
def test_hf_export_loads_in_fresh_process_without_amoeba(tmp_path, input_ids):
    model, anatomy = _tiny("llama")
    plan = uniform_plan(anatomy)
    expected = _soft_logits(model, anatomy, plan, input_ids)
    torch.save({"ids": input_ids, "logits": expected}, tmp_path / "expected.pt")
    out = export("hf", ExportRequest(model=model, anatomy=anatomy, plan=plan, info=dict(INFO)), tmp_path / "out")

    assert _model_type(out) == "llama"
    assert {"config.json", "model.safetensors", "plan.json", "README.md", "amoeba_export.json"} <= {
        p.name for p in out.iterdir()}
    code = textwrap.dedent("""
        import sys
        import torch
        from transformers import AutoModelForCausalLM
        ref = torch.load(sys.argv[1])
        model = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
        assert type(model).__name__ == "LlamaForCausalLM", type(model).__name__
        with torch.no_grad():
            got = model(ref["ids"]).logits
        torch.testing.assert_close(got, ref["logits"], atol=1e-5, rtol=0)
        gen = model.generate(ref["ids"][:1], max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
        assert gen.shape == (1, ref["ids"].shape[1] + 3), gen.shape
        assert "amoeba_plugin" not in sys.modules, "the subprocess imported amoeba_plugin"
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "expected.pt"), str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_auto_picks_stock_for_uniform_plans(tmp_path, family, input_ids):
    model, anatomy = _tiny(family)
    plan = uniform_plan(anatomy)
    out = export("auto", ExportRequest(model=model, anatomy=anatomy, plan=plan), tmp_path / "out")
    assert _model_type(out) == family
    info = json.loads((out / "amoeba_export.json").read_text())
    assert info["architecture"] == "stock" and info["exporter"] == "auto"
    assert info["amoeba_plugin_version"] == amoeba_plugin.__version__
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = reloaded(input_ids).logits
    torch.testing.assert_close(got, _soft_logits(model, anatomy, plan, input_ids), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in reloaded.parameters()) == plan.num_parameters(anatomy)


def test_request_sliced_is_reused_when_it_fits(tmp_path):
    model, anatomy = _tiny("llama")
    plan = uniform_plan(anatomy)
    sliced = slice_model(model, anatomy, plan)
    with torch.no_grad():
        sliced.model.norm.weight.fill_(0.5)  # a marker: only the reused model carries it
    out = export("hf", ExportRequest(model=model, anatomy=anatomy, plan=plan, sliced=sliced), tmp_path / "hf")
    assert torch.all(AutoModelForCausalLM.from_pretrained(out).model.norm.weight == 0.5)
    # a stock slice does not fit the amoeba exporter: it slices again, into the amoeba architecture
    out = export("amoeba", ExportRequest(model=model, anatomy=anatomy, plan=plan, sliced=sliced), tmp_path / "am")
    assert _model_type(out) == "amoeba"
    assert not torch.all(AutoModelForCausalLM.from_pretrained(out).model.norm.weight == 0.5)


def test_export_keeps_dtype(tmp_path, input_ids):
    model, anatomy = _tiny("llama")
    model.to(torch.bfloat16)
    plan = uniform_plan(anatomy)
    out = export("hf", ExportRequest(model=model, anatomy=anatomy, plan=plan), tmp_path / "out")
    header_len = int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((out / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(reloaded.parameters()).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------- amoeba
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_auto_heterogeneous_plan_gives_amoeba(tmp_path, family, input_ids):
    model, anatomy = _tiny(family)
    plan = mixed_plan(anatomy)
    out = export("auto", ExportRequest(model=model, anatomy=anatomy, plan=plan), tmp_path / "out")
    assert _model_type(out) == "amoeba"
    assert json.loads((out / "amoeba_export.json").read_text())["architecture"] == "amoeba"
    assert AutoConfig.from_pretrained(out).source_model_type == family
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == "AmoebaForCausalLM"
    sliced = slice_model(model, anatomy, plan)
    with torch.no_grad():
        got, direct = reloaded(input_ids).logits, sliced(input_ids).logits
    assert torch.equal(got, direct)
    torch.testing.assert_close(got, _soft_logits(model, anatomy, plan, input_ids), atol=1e-5, rtol=0)
    if family == "qwen2":
        assert reloaded.model.layers[0].self_attn.q_proj.bias is not None
    if family == "qwen3":
        assert reloaded.model.layers[0].self_attn.q_norm is not None


def test_generate_on_reloaded_amoeba_export(tmp_path, input_ids):
    model, anatomy = _tiny("llama")
    plan = mixed_plan(anatomy)
    out = export("amoeba", ExportRequest(model=model, anatomy=anatomy, plan=plan), tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    sliced = slice_model(model, anatomy, plan)
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    cached = reloaded.generate(input_ids[:1], **kw)
    assert cached.shape == (1, input_ids.shape[1] + 5)
    assert torch.equal(cached, reloaded.generate(input_ids[:1], use_cache=False, **kw))
    assert torch.equal(cached, sliced.generate(input_ids[:1], **kw))


def test_patch_with_output_biases_is_exported(tmp_path, input_ids):
    model, anatomy = _tiny("llama")
    plan = uniform_plan(anatomy, output_bias=True)  # uniform: the added biases alone rule out stock
    g = torch.Generator().manual_seed(5)
    patch = {"model.layers.0.self_attn.o_proj.bias": torch.randn(64, generator=g) * 0.1,
             "model.layers.0.mlp.down_proj.bias": torch.randn(64, generator=g) * 0.1,
             "model.layers.3.mlp.down_proj.bias": torch.randn(64, generator=g) * 0.1}  # layer 1: zero biases
    request = ExportRequest(model=model, anatomy=anatomy, plan=plan, patch=patch)
    reason = plugins.get("exporters", "hf").check(request)
    assert "o_proj, down_proj biases" in reason and "output_bias" in reason
    out = export("auto", request, tmp_path / "out")
    assert _model_type(out) == "amoeba"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(reloaded.model.layers[0].self_attn.o_proj.bias, patch["model.layers.0.self_attn.o_proj.bias"])
    assert torch.all(reloaded.model.layers[1].self_attn.o_proj.bias == 0)
    with torch.no_grad():
        got = reloaded(input_ids).logits
    expected = _soft_logits(model, anatomy, plan, input_ids, patch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, _soft_logits(model, anatomy, plan, input_ids), atol=1e-4)  # patch matters
    assert sum(p.numel() for p in reloaded.parameters()) == plan.num_parameters(anatomy)
    assert "3 tensor(s)" in (out / "README.md").read_text()


# ---------------------------------------------------------------------------------------- refusals
def test_hf_refuses_heterogeneous_plan_and_leaves_nothing(tmp_path):
    model, anatomy = _tiny("llama")
    dest = tmp_path / "exports" / "out"
    with pytest.raises(AmoebaError, match="differ in shape"):
        export("hf", ExportRequest(model=model, anatomy=anatomy, plan=mixed_plan(anatomy)), dest)
    assert not dest.exists()
    if dest.parent.exists():
        assert list(dest.parent.iterdir()) == []
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("case,reason", [
    ("no-attention", "no attention"),
    ("head-channels", "inside attention heads"),
    ("output-bias", "bias"),
    ("validator", "rejects the sliced shape"),   # 6 query heads: LlamaConfig wants hidden % heads == 0
])
def test_hf_check_names_the_reason(case, reason):
    model, anatomy = _tiny("llama")
    layers = [0, 1, 2, 3]
    plan = {
        "no-attention": lambda: Plan([LayerPlan(i, kv_groups=[]) for i in layers]),
        "head-channels": lambda: Plan([LayerPlan(i, head_channels=[0, 1, 4, 5]) for i in layers]),
        "output-bias": lambda: Plan([LayerPlan(i) for i in layers], output_bias=True),
        "validator": lambda: Plan([LayerPlan(i, query_heads=[[0, 1, 2], [1, 2, 3]]) for i in layers]),
    }[case]()
    request = ExportRequest(model=model, anatomy=anatomy, plan=plan)
    assert reason in plugins.get("exporters", "hf").check(request)
    assert plugins.get("exporters", "auto").check(request) is None
    assert plugins.get("exporters", "hf").check(ExportRequest(model=model, anatomy=anatomy,
                                                              plan=uniform_plan(anatomy))) is None


def test_hf_refuses_an_amoeba_source(tmp_path):
    model, anatomy = _tiny("llama")
    small = slice_model(model, anatomy, mixed_plan(anatomy))
    small_anatomy = anatomy_of(small)
    request = ExportRequest(model=small, anatomy=small_anatomy, plan=Plan.full(small_anatomy))
    assert "amoeba" in plugins.get("exporters", "hf").check(request)
    out = export("auto", request, tmp_path / "again")
    assert _model_type(out) == "amoeba"


# ---------------------------------------------------------------------------------------- atomicity
class _Broken:
    name = "test-broken"
    description = "writes a file, then fails"

    def check(self, request):
        return None

    def write(self, request, directory):
        (directory / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("disk full (simulated)")


class _BrokenPlugin:
    @hookimpl
    def amoeba_register_exporters(self, register):
        register(_Broken())


@pytest.fixture
def broken_exporter():
    with registered_plugin(_BrokenPlugin(), "test-broken-plugin"):
        yield "test-broken"


def test_failing_write_leaves_nothing(tmp_path, broken_exporter):
    model, anatomy = _tiny("llama")
    request = ExportRequest(model=model, anatomy=anatomy, plan=uniform_plan(anatomy))
    with pytest.raises(RuntimeError, match="simulated"):
        export(broken_exporter, request, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)
    # a failing overwrite keeps the old export intact
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="simulated"):
        export(broken_exporter, request, tmp_path / "old", overwrite=True)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]
    _no_leftovers(tmp_path)


def test_existing_directory_needs_overwrite(tmp_path):
    model, anatomy = _tiny("llama")
    request = ExportRequest(model=model, anatomy=anatomy, plan=uniform_plan(anatomy))
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("old")
    with pytest.raises(AmoebaError, match="not empty"):
        export("plan", request, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    export("plan", request, dest, overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "plan.json"]
    _no_leftovers(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    export("plan", request, empty)  # an empty directory is fine without overwrite
    assert (empty / "plan.json").exists()


# ---------------------------------------------------------------------------------------- plan and card
def test_plan_round_trips_and_card_is_factual(tmp_path):
    model, anatomy = _tiny("llama")
    plan = uniform_plan(anatomy)
    out = export("hf", ExportRequest(model=model, anatomy=anatomy, plan=plan, info=dict(INFO)), tmp_path / "out")
    assert Plan.load(out).to_dict() == plan.to_dict()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    front = card.split("---")[1]
    assert 'base_model: "example-org/tiny-llama"' in front
    assert all(f"- {t}" in front for t in ("amoeba-plugin", "pruned", "structured-pruning"))
    summary = plan.summary(anatomy)
    full = Plan.full(anatomy)
    for text in ("uniform-magnitude", "params=0.6", "magnitude", "sotu:train", "Seed: 3",
                 f"{summary['parameters']:,}", f"{full.num_parameters(anatomy):,}",
                 f"{summary['non_embedding_parameters']:,}", f"{full.num_parameters(anatomy, embeddings=False):,}",
                 "dropped: 2", "12.25", "15.5", "AutoModelForCausalLM.from_pretrained"):
        assert text in card, text
    assert "import amoeba_plugin" not in card
    assert "| 2 | 3 | 4 / 8 | 2 / 2 | 8 / 8 | 50 / 96 |" in card  # new layer 2 is source layer 3
    info = json.loads((out / "amoeba_export.json").read_text())
    assert info["summary"]["parameters"] == summary["parameters"]
    assert info["summary"]["dropped_layers"] == [2]
    assert info["info"]["method"] == "uniform-magnitude"


def test_amoeba_card_says_to_import_amoeba_plugin(tmp_path):
    model, anatomy = _tiny("llama")
    request = ExportRequest(model=model, anatomy=anatomy, plan=mixed_plan(anatomy),
                            info={"source_model": str(tmp_path), "perplexity": {"source": "sotu:valid",
                                                                                  "before": 10.0, "after": 11.5}})
    out = export("amoeba", request, tmp_path / "out")
    card = (out / "README.md").read_text()
    assert "import amoeba_plugin" in card and "base_model" not in card  # a local path is not a hub id
    assert "| perplexity | sotu:valid | 10 | 11.5 |" in card
    assert "Method: not recorded" in card


def test_plan_exporter_writes_only_the_plan(tmp_path):
    model, anatomy = _tiny("llama")
    plan = mixed_plan(anatomy, provenance={"method": "manual"})
    out = export("plan", ExportRequest(model=model, anatomy=anatomy, plan=plan, info=dict(INFO)), tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "plan.json"]
    assert Plan.load(out / "plan.json").to_dict() == plan.to_dict()
    assert "amoeba export" in (out / "README.md").read_text()


def test_builtin_exporters_are_registered():
    names = plugins.registry("exporters")
    assert {"auto", "hf", "amoeba", "plan"} <= set(names)
    assert plugins.owner("exporters", "auto") == "amoeba_plugin.builtin.exporters"
    assert all(isinstance(names[n], Exporter) for n in ("auto", "hf", "amoeba", "plan"))


@pytest.mark.parametrize("exporter", ["hf", "amoeba"])
def test_tied_embeddings_survive_export(tmp_path, exporter, input_ids):
    model, anatomy = _tiny("llama", tie_word_embeddings=True)
    assert anatomy.tied_embeddings
    plan = uniform_plan(anatomy)
    out = export(exporter, ExportRequest(model=model, anatomy=anatomy, plan=plan), tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        got = reloaded(input_ids).logits
    torch.testing.assert_close(got, _soft_logits(model, anatomy, plan, input_ids), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in reloaded.parameters()) == plan.num_parameters(anatomy)
