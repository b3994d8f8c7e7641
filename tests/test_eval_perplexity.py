"""Perplexity: the protocol's arithmetic, and a random model scoring near its vocabulary size."""
import math

import pytest
import torch

from amoeba_plugin import plugins
from amoeba_plugin.data import token_windows
from amoeba_plugin.eval import Evaluator, PerplexityEvaluator, perplexity
from amoeba_plugin.testing import make_tiny
from test_data import corpus, make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return make_tiny("llama", vocab_size=len(tok))


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("\n\n".join(corpus(30, seed=7)))
    return f"file:{path}"


def test_registered():
    ev = plugins.get("evaluators", "perplexity")
    assert isinstance(ev, PerplexityEvaluator) and isinstance(ev, Evaluator)


def test_random_model_is_near_uniform(model, tok, spec):
    ppl = perplexity(model, tok, source=spec, seq_len=32, max_windows=8)
    assert math.isfinite(ppl) and 0.5 * len(tok) < ppl < 2 * len(tok)


def test_matches_mean_token_nll(model, tok, spec):
    result = PerplexityEvaluator().evaluate(model, tok, source=spec, seq_len=24, max_windows=5, batch_size=2)
    assert result["windows"] == 5 and result["tokens"] == 5 * 23 and result["seq_len"] == 24
    windows = token_windows(tok, corpus(30, seed=7), 24, 5)
    with torch.no_grad():
        losses = [float(model(input_ids=w[None], labels=w[None]).loss) for w in windows]
    assert result["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)


def test_restores_training_mode(model, tok, spec):
    model.train()
    plugins.get("evaluators", "perplexity")(model, tok, source=spec, seq_len=16, max_windows=2)
    assert model.training
    model.eval()
