"""Text sources, spec resolution, the perplexity window protocol and calibration sampling."""
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from amoeba_plugin import plugins
from amoeba_plugin.data import (
    TextSource, calibration_windows, eval_windows, resolve_source, source_tokens, text_file_source, token_windows,
)
from amoeba_plugin.errors import DataError, UnknownNameError

WORDS = ("the state of the union is strong and the people are free to speak of liberty "
         "congress shall make laws for the nation while the president reports each year").split()


def corpus(n_docs=40, words=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (words,), generator=g).tolist())
            for _ in range(n_docs)]


def make_tokenizer(vocab_size=300):
    """A byte-level BPE trained in-process (deterministic, milliseconds)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("\n\n".join(corpus(20)) + "\n")
    return path


def test_builtin_sources_registered():
    reg = plugins.registry("datasets")
    assert {"sotu", "brown", "moby-dick"} <= set(reg)
    assert reg["sotu"].split_names() == ["train", "validation"]
    assert reg["sotu"].role("train") == "train" and reg["sotu"].role("validation") == "evaluation"
    assert reg["brown"].split_names() == ["test"] and reg["brown"].role("test") == "evaluation"
    docs = reg["moby-dick"].documents("test")
    assert len(docs) == 136 and all(isinstance(d, str) and d for d in docs)


def test_bad_split_names_available_splits():
    with pytest.raises(DataError, match="available: train, validation"):
        plugins.get("datasets", "sotu").documents("test")
    with pytest.raises(DataError, match="no split 'train'"):
        resolve_source("brown:train")


def test_resolve_source_syntax(text_file, tmp_path):
    assert resolve_source("sotu:train")[1] == "train"
    assert resolve_source("sotu", purpose="evaluation")[1] == "validation"
    assert resolve_source("sotu", purpose="calibration")[1] == "train"
    source, split = resolve_source("brown")
    assert (source.name, split) == ("brown", "test")
    source, split = resolve_source(f"file:{text_file}")
    assert split == "text" and len(source.documents("text")) == 20
    source, split = resolve_source(str(text_file))  # an existing path is a text file
    assert split == "text" and source.documents(split)[0] == corpus(20)[0]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(f'{{"body": "{d}"}}\n' for d in corpus(3)))
    source, split = resolve_source(f"json:{jsonl}?column=body")
    assert split == "train" and source.documents(split) == corpus(3)
    with pytest.raises(DataError, match="no column 'text'"):
        resolve_source(f"json:{jsonl}")[0].documents("train")


def test_unknown_source_lists_names_and_syntax():
    with pytest.raises(UnknownNameError) as err:
        resolve_source("wikitext2:test")
    assert "sotu" in err.value.problem and "brown" in err.value.problem
    assert "NAME[:SPLIT]" in err.value.fix and "file:PATH" in err.value.fix
    with pytest.raises(DataError, match="no text file"):
        resolve_source("file:/nonexistent/x.txt")


def test_text_file_documents_split_on_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first doc\nline two\n\n\n  \nsecond doc\n")
    assert text_file_source(path).documents("text") == ["first doc\nline two", "second doc"]


def test_token_windows_protocol(tok):
    docs = corpus(10)
    ids = tok("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    w = token_windows(tok, docs, 16)
    assert w.dtype == torch.long and w.shape == (len(ids) // 16, 16)
    assert w.flatten().tolist() == ids[: w.numel()]  # non-overlapping, in order, remainder dropped
    assert torch.equal(token_windows(tok, docs, 16, max_windows=3), w[:3])
    with pytest.raises(DataError, match="fewer than one window"):
        token_windows(tok, ["hi"], 64)


def test_tokenization_is_cached(tok, text_file):
    source, split = resolve_source(f"file:{text_file}")
    assert source_tokens(tok, source, split) is source_tokens(tok, source, split)
    assert eval_windows(tok, f"file:{text_file}", 16, 4).shape == (4, 16)


def test_calibration_is_seeded(tok, text_file):
    spec = f"file:{text_file}"
    a, b = calibration_windows(tok, spec, 8, 16, seed=3), calibration_windows(tok, spec, 8, 16, seed=3)
    assert a.shape == (8, 16) and torch.equal(a, b)
    assert not torch.equal(a, calibration_windows(tok, spec, 8, 16, seed=4))
    flat = source_tokens(tok, *resolve_source(spec)).tolist()
    row = a[0].tolist()
    assert any(flat[i: i + 16] == row for i in range(len(flat) - 15))  # a real window of the text


def test_calibration_refuses_evaluation_splits(tok):
    with pytest.raises(DataError, match="held out for evaluation") as err:
        calibration_windows(tok, "sotu:validation", 4, 16)
    assert "sotu:train" in err.value.fix
    with pytest.raises(DataError, match="held out"):
        calibration_windows(tok, "brown", 4, 16)


def test_calibration_too_large_request(tok, text_file):
    n_tokens = source_tokens(tok, *resolve_source(f"file:{text_file}")).numel()
    with pytest.raises(DataError) as err:
        calibration_windows(tok, f"file:{text_file}", 10_000, 16)
    assert f"enough for {n_tokens // 16} windows" in err.value.problem
    assert f"at most {n_tokens // 16} samples" in err.value.fix


def test_custom_source_subclass(tok):
    class Lines(TextSource):
        name = "test-lines"
        splits = {"train": lambda: corpus(5), "test": lambda: corpus(5, seed=1)}

    src = Lines()
    assert src.name == "test-lines" and src.role("test") == "evaluation"
    assert resolve_source(src, purpose="evaluation") == (src, "test")
    assert calibration_windows(tok, src, 2, 8).shape == (2, 8)


def test_evaluation_on_the_calibration_text_is_refused(tok, text_file):
    from amoeba_plugin.data import check_disjoint

    check_disjoint("sotu:train", "sotu:validation")
    check_disjoint("sotu:train", "brown")
    with pytest.raises(DataError, match="is the calibration text") as err:
        check_disjoint("sotu:train", "sotu:train")
    assert "sotu:validation" in err.value.fix and "--allow-eval-on-calibration" in err.value.fix
    with pytest.raises(DataError, match="is the calibration text"):
        check_disjoint(f"file:{text_file}", str(text_file))  # the same file, spelled two ways
    check_disjoint("sotu:train", "sotu:train", allow=True)
