"""Model names and paths resolve, or fail with one clear error."""
import pytest

from amoeba_plugin import models
from amoeba_plugin.errors import CorruptFileError, ModelNotFoundError
from amoeba_plugin.models import EMBEDDED, EMBEDDED_DIR, load_model, resolve_model_path
from amoeba_plugin.testing import make_tiny
from test_data import make_tokenizer


@pytest.fixture
def saved(tmp_path):
    tok = make_tokenizer()
    path = tmp_path / "tiny"
    make_tiny("llama", vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("AMOEBA_CACHE")
    assert models.cache_dir().name == "amoeba-plugin"


def test_embedded_name():
    if not (EMBEDDED_DIR / "config.json").is_file():
        pytest.skip("embedded model not built yet")
    assert resolve_model_path(EMBEDDED) == str(EMBEDDED_DIR)


def test_smollm2_not_fetched(monkeypatch, tmp_path):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("smollm2-135m")
    assert err.value.fix == "amoeba fetch smollm2-135m"


def test_paths_and_hub_ids(tmp_path, saved):
    assert resolve_model_path(saved) == str(saved)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    for missing in (str(tmp_path / "nope"), "./nope", "~/nope/at/all", "runs/a/b"):
        with pytest.raises(ModelNotFoundError, match="no model at"):
            resolve_model_path(missing)
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(tmp_path)


def test_load_round_trip(saved):
    model, tok = load_model(saved)
    assert not model.training and tok is not None and model.config.vocab_size == len(tok)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors(saved, damage):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x13garbage, not a safetensors header" * 10 if damage == "garbage"
                        else data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as err:
        load_model(saved)
    assert "model.safetensors" in err.value.problem and "again" in err.value.fix


def test_corrupt_config(saved):
    (saved / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(CorruptFileError, match="config.json"):
        load_model(saved)


def test_unreachable_hub(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    with pytest.raises(ModelNotFoundError, match="hub cannot be reached") as err:
        load_model("no-such-owner-xyz/no-such-model")
    assert "local model directory" in err.value.fix


@pytest.mark.slow
def test_smollm2_cache_loads():
    path = models.cache_dir() / "smollm2-135m"
    if not (path / "model.safetensors").is_file():
        pytest.skip("run `amoeba fetch smollm2-135m` first")
    import torch

    model, tok = load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    assert "Apache-2.0" in (path / "SOURCE.md").read_text()
