"""Shared fixtures: tiny in-process models of every supported family (no downloads)."""
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from transformers import (  # noqa: E402
    LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
    Qwen3Config, Qwen3ForCausalLM,
)

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 64}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
}


def make_tiny(family: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised tiny model whose norms and biases are perturbed, so masks matter."""
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**COMMON, **extra, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request):
    return make_tiny(request.param)


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")


@pytest.fixture
def input_ids():
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
