"""Fixtures the searchllm tests share: the tiny model of the host's test kit and token windows."""
import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.testing import make_tiny


@pytest.fixture(scope="module")
def tiny():
    """4 layers, hidden 64, 8 query heads in 2 KV groups, head_dim 8 (4 RoPE pairs), MLP 96."""
    model = make_tiny("llama")
    return model, anatomy_of(model)


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 128, (12, 24), generator=torch.Generator().manual_seed(0))
