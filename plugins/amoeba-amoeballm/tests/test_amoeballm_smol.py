"""SMoL (AmoebaLLM's shape-aware mixture of LoRA experts) on peft: exact merge, gates, grads, I/O."""
import copy

import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.testing import make_tiny

smol = pytest.importorskip("amoeba_amoeballm.smol")
SMoLAdapter, SMoLConfig, ShapeRouter = smol.SMoLAdapter, smol.SMoLConfig, smol.ShapeRouter

ENC = 7  # 4 layers ++ one-hot over 3 widths
FULL = smol.shape_encoding([1, 1, 1, 1], 0, 3)
SMALL = smol.shape_encoding([1, 0, 1, 0], 2, 3)


def _adapter(family="llama", **cfg):
    model = make_tiny(family)
    base = copy.deepcopy(model)
    config = SMoLConfig(**{"num_experts": 4, "rank": 4, "top_k": 2, **cfg})
    adapter = SMoLAdapter.create(model, anatomy_of(model), config, encoding_dim=ENC, seed=0)
    return adapter, base


def _perturb(adapter, seed=3):
    """Fresh LoRA has B = 0 (a no-op); give every expert a distinct non-zero B."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.trainable_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _merged(base, deltas):
    with torch.no_grad():
        for key, delta in deltas.items():
            base.get_parameter(key).add_(delta)
    return base


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family,mixing", [("llama", "weights"), ("llama", "outputs"),
                                           ("qwen2", "weights"), ("qwen2", "outputs")])
def test_merged_deltas_equal_gated_forward(family, mixing, input_ids):
    adapter, base = _adapter(family, mixing=mixing)
    _perturb(adapter)
    adapter.eval()
    for enc in (FULL, SMALL):
        adapter.set_shape(enc)
        got = _logits(adapter.model, input_ids)
        deltas = adapter.deltas(enc)
        assert set(deltas) == {f"{n}.weight" for n in adapter.targets}
        assert all(d.abs().max() > 0 for d in deltas.values())
        want = _logits(_merged(copy.deepcopy(base), deltas), input_ids)
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(got, _logits(base, input_ids), atol=1e-3)


def test_weights_mixing_is_official_formula():
    """A_mix/B_mix mixed separately (cross terms g_i g_j B_i A_j), not a sum of expert products."""
    adapter, _ = _adapter()
    _perturb(adapter)
    adapter.eval()
    gate = adapter.set_shape(FULL)
    name = adapter.targets[0]
    module = adapter.base_model.get_submodule(name)
    a = sum(gate[e] * module.lora_A[f"expert_{e}"].weight for e in range(4))
    b = sum(gate[e] * module.lora_B[f"expert_{e}"].weight for e in range(4))
    delta = adapter.deltas(FULL)[f"{name}.weight"]
    assert torch.allclose(delta, adapter.config.scaling * b @ a, atol=1e-6)
    outputs = sum(gate[e] * adapter.config.scaling * module.lora_B[f"expert_{e}"].weight
                  @ module.lora_A[f"expert_{e}"].weight for e in range(4))
    assert not torch.allclose(delta, outputs, atol=1e-6)


def test_router_topk_noise_and_determinism():
    torch.manual_seed(0)
    router = ShapeRouter(ENC, num_experts=5, top_k=2, hidden=16, noise=True).eval()
    g1, g2 = router(FULL), router(FULL)
    assert torch.equal(g1, g2)
    for g in (g1, router(SMALL), router.train()(FULL)):
        assert int((g != 0).sum()) == 2 and torch.isclose(g.sum(), torch.tensor(1.0))
    noisy = [router(FULL) for _ in range(5)]
    assert any(not torch.equal(noisy[0], n) for n in noisy[1:])
    quiet = ShapeRouter(ENC, 5, 2, noise=False).train()
    assert torch.equal(quiet(FULL), quiet(FULL))


def test_adapter_gate_eval_deterministic_train_noisy():
    adapter, _ = _adapter(router_noise=True)
    adapter.eval()
    first = adapter.set_shape(FULL)
    assert not first.requires_grad and torch.equal(first, adapter.set_shape(FULL))
    adapter.train()
    gates = [adapter.set_shape(FULL) for _ in range(5)]
    assert gates[0].requires_grad
    assert any(not torch.equal(gates[0], g) for g in gates[1:])


def test_gradients_reach_router_and_selected_experts_only(input_ids):
    adapter, _ = _adapter(router_noise=False)
    _perturb(adapter)
    adapter.train()
    gate = adapter.set_shape(SMALL)
    chosen = {f"expert_{e}" for e in torch.nonzero(gate).reshape(-1).tolist()}
    assert len(chosen) == 2
    adapter.model(input_ids=input_ids).logits.pow(2).mean().backward()
    for name, p in adapter.trainable_parameters():
        if name.startswith("router."):
            if ".noise." not in name:  # the noise head is unused when noise is off
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            continue
        expert = name.split(".lora_")[1].split(".")[1]
        if expert in chosen:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    trainable = {id(p) for _, p in adapter.trainable_parameters()}
    for name, p in adapter.model.named_parameters():
        if id(p) not in trainable:
            assert not p.requires_grad and p.grad is None, name


def test_save_load_round_trip(tmp_path, input_ids):
    adapter, base = _adapter("qwen2", mixing="outputs")
    _perturb(adapter)
    adapter.eval()
    adapter.set_shape(SMALL)
    want = _logits(adapter.model, input_ids)
    adapter.save(tmp_path)
    assert (tmp_path / "router.safetensors").exists() and (tmp_path / "smol_config.json").exists()
    loaded = SMoLAdapter.load(base, anatomy_of(base), tmp_path)
    assert loaded.config == adapter.config
    for (k, v), (k2, v2) in zip(adapter.router.state_dict().items(), loaded.router.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(loaded.set_shape(SMALL), adapter.set_shape(SMALL))
    assert torch.equal(_logits(loaded.model, input_ids), want)
    assert not any(p.requires_grad for _, p in loaded.trainable_parameters())
    trainable = SMoLAdapter.load(make_tiny("qwen2"), anatomy_of(base), tmp_path, is_trainable=True)
    assert len(trainable.trainable_parameters()) == len(adapter.trainable_parameters())
    assert all(p.requires_grad for _, p in trainable.trainable_parameters())


def test_plain_lora_matches_peft_merge(input_ids):
    adapter, base = _adapter(num_experts=1)
    assert adapter.router is None
    assert "forward" not in vars(adapter.base_model.get_submodule(adapter.targets[0]))  # peft's own
    _perturb(adapter)
    adapter.eval()
    assert torch.equal(adapter.set_shape(FULL), torch.ones(1))
    deltas = adapter.deltas(FULL)
    merged = copy.deepcopy(adapter.model).merge_and_unload()
    for key, delta in deltas.items():
        assert torch.allclose(base.get_parameter(key) + delta, merged.get_parameter(key), atol=1e-6)
    assert torch.allclose(_logits(adapter.model, input_ids), _logits(merged, input_ids), atol=1e-5)


def test_hooks_on_wrapped_linears_still_apply(input_ids):
    adapter, base = _adapter()
    _perturb(adapter)
    adapter.eval()
    adapter.set_shape(FULL)
    plain = _logits(adapter.model, input_ids)
    merged = _merged(copy.deepcopy(base), adapter.deltas(FULL))
    layer = adapter.anatomy.layers[1].modules
    scale = torch.linspace(0, 1, 96)
    bias = torch.randn(64) * 0.1
    for model in (adapter.base_model, merged):
        model.get_submodule(layer["down"]).register_forward_pre_hook(
            lambda m, args: (args[0] * scale, *args[1:]))
        model.get_submodule(layer["o"]).register_forward_hook(lambda m, args, out: out + bias)
    hooked = _logits(adapter.model, input_ids)
    assert not torch.allclose(hooked, plain, atol=1e-3)
    assert torch.allclose(hooked, _logits(merged, input_ids), atol=1e-5)


def test_deepcopy_and_unload(input_ids):
    adapter, base = _adapter()
    _perturb(adapter)
    adapter.eval()
    adapter.set_shape(SMALL)
    want = _logits(adapter.model, input_ids)
    twin = copy.deepcopy(adapter.model)
    adapter.set_shape(FULL)  # the copy keeps its own gate (forward rebinds to the copied module)
    assert not torch.allclose(_logits(adapter.model, input_ids), want, atol=1e-6)
    assert torch.equal(_logits(twin, input_ids), want)
    with adapter.model.disable_adapter():  # peft's switch still gives the base (e.g. a frozen teacher)
        assert torch.equal(_logits(adapter.model, input_ids), _logits(base, input_ids))
    restored = adapter.unload()
    assert type(restored.get_submodule(adapter.targets[0])) is torch.nn.Linear
    assert torch.equal(_logits(restored, input_ids), _logits(base, input_ids))


def test_bf16_base_keeps_float32_experts(input_ids):
    model = make_tiny("llama").to(torch.bfloat16)
    adapter = SMoLAdapter.create(model, anatomy_of(model), SMoLConfig(num_experts=2, rank=4), ENC)
    assert all(p.dtype == torch.float32 for _, p in adapter.trainable_parameters())
    _perturb(adapter)
    adapter.eval().set_shape(FULL)
    assert _logits(adapter.model, input_ids).dtype == torch.bfloat16
    deltas = adapter.deltas(FULL)
    assert all(d.dtype == torch.bfloat16 for d in deltas.values())


@pytest.mark.parametrize("bad", [dict(num_experts=0), dict(top_k=5), dict(rank=True),
                                 dict(mixing="tokens"), dict(dropout=1.0), dict(alpha=-1),
                                 dict(target_roles=("q", "lm_head")), dict(target_roles=()),
                                 dict(router_hidden=0), dict(colour="red")])
def test_bad_config_raises(bad):
    with pytest.raises(AmoebaError, match="Fix:"):
        SMoLConfig.from_dict({**SMoLConfig(num_experts=4).to_dict(), **bad})


def test_config_round_trip_and_plain_lora_ignores_top_k():
    cfg = SMoLConfig(num_experts=3, top_k=1, mixing="outputs", target_roles=["q", "v"])
    assert SMoLConfig.from_dict(cfg.to_dict()) == cfg and cfg.target_roles == ("q", "v")
    assert SMoLConfig(num_experts=1).top_k == 2


def test_misuse_raises(input_ids):
    adapter, _ = _adapter(target_roles=("q", "down"))
    assert len(adapter.targets) == 8
    with pytest.raises(AmoebaError, match="set_shape"):
        adapter.model(input_ids=input_ids)
    with pytest.raises(AmoebaError, match="already carries peft"):
        SMoLAdapter.create(adapter.base_model, adapter.anatomy, SMoLConfig(), ENC)
    adapter.eval()
    with pytest.raises(AmoebaError, match="features"):
        adapter.set_shape(torch.ones(ENC + 1))
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    model.model.layers[0].self_attn.q_proj = torch.nn.Identity()
    with pytest.raises(AmoebaError, match="nn.Linear"):
        SMoLAdapter.create(model, anatomy, SMoLConfig(), ENC)
