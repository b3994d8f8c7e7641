"""Datasets of the packaged lm-eval tasks (``amoeba_plugin/eval/tasks/*.yaml``), built from the corpora
shipped in :mod:`amoeba_plugin.data`: nothing is downloaded.

The YAMLs point here with ``custom_dataset: !function amoeba_plugin.eval.task_data.<fn>``; lm-eval calls
the function with the task's metadata (and, from its CLI, the ``--model_args``) as keyword arguments,
which are ignored. Each returns a ``datasets.DatasetDict``.

* perplexity tasks: one row per document, column ``text``;
* ``amoeba_sotu_cloze``: how does the sentence end? ``context`` (two sentences and the beginning of a
  third), ``choices`` (the true ending and three distractors, endings of the same length taken from
  sentences of *other* addresses) and ``label`` (index of the true one). Built from the held-out
  ``sotu:validation`` split with a fixed seed, so the items are the same on every machine; the
  few-shot split ``train`` comes from ``sotu:train`` the same way.
"""
from __future__ import annotations

import functools
import random
import re
from typing import Any

#: items in the test split of amoeba_sotu_cloze (a run on the embedded model takes seconds)
CLOZE_ITEMS = 200
#: items in its few-shot (train) split
CLOZE_FEWSHOT_ITEMS = 50
CLOZE_SEED = 1234
#: sentences shorter or longer than this (in words) are neither asked about nor used for distractors
MIN_WORDS, MAX_WORDS = 8, 40
CONTEXT_SENTENCES = 2
#: the answer is the last 40 % of the sentence's words, at least 3
ENDING_FRACTION, MIN_ENDING = 0.4, 3
#: amoeba_brown_ppl takes every BROWN_STEP-th Brown sample
BROWN_STEP = 5

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")


def _documents(spec: str) -> list[str]:
    from ..data import resolve_source

    source, split = resolve_source(spec, purpose="evaluation")
    return source.documents(split)


def _text_dataset(spec: str, step: int = 1):
    import datasets

    docs = [d for d in _documents(spec) if d.strip()][::step]
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": docs})})


def sotu_ppl(**_: Any):
    """``sotu:validation``: the 23 held-out State of the Union addresses, one document each."""
    return _text_dataset("sotu:validation")


def brown_ppl(**_: Any):
    """``brown:test``: every 5th of the 500 Brown corpus samples (100 samples, ~207k words).

    The samples are ordered by genre, so the subset keeps all 15 genres in proportion; and at about the
    size of the other two tasks (and of wikitext-2's test split) a full run stays affordable on a CPU."""
    return _text_dataset("brown:test", step=BROWN_STEP)


def moby_ppl(**_: Any):
    """``moby-dick:test``: Moby-Dick, one chapter per document."""
    return _text_dataset("moby-dick:test")


def sentences(document: str) -> list[str]:
    """A plain rule-based sentence split (end punctuation followed by a capital); whitespace collapsed."""
    text = " ".join(document.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _fits(sentence: str) -> bool:
    return MIN_WORDS <= len(sentence.split()) <= MAX_WORDS


def _ending_length(words: int) -> int:
    """How many final words of a sentence of ``words`` words are the answer."""
    return max(MIN_ENDING, round(words * ENDING_FRACTION))


def cloze_items(documents: list[str], n: int, seed: int = CLOZE_SEED, choices: int = 4) -> list[dict]:
    """``n`` sentence-completion items from ``documents`` (deterministic for a given seed).

    An item's context is ``CONTEXT_SENTENCES`` sentences of one document and the beginning of the next
    sentence; the answer is that sentence's last ``ENDING_FRACTION`` of words (at least ``MIN_ENDING``).
    The ``choices - 1`` distractors are endings, of the same length give or take a word, of sentences
    from *other* documents that end no sentence of this one: every option is a fluent sentence ending,
    so only the context tells them apart (with whole next sentences as options, a small model scores at
    chance: it ranks sentences by their own likelihood, whatever came before).
    """
    rng = random.Random(seed)
    split = [sentences(d) for d in documents]
    pool: list[tuple[int, str, int]] = []  # (document, ending, ending length) of every usable sentence
    for i, sents in enumerate(split):
        for sentence in sents:
            if _fits(sentence):
                words = sentence.split()
                k = _ending_length(len(words))
                pool.append((i, " ".join(words[-k:]), k))
    # every word-suffix of every sentence, per document: a stock phrase that also ends a sentence of
    # the item's own document ("... of the United States.") is no distractor
    endings_of = [{" ".join(w[-k:]) for w in (x.split() for x in sents) for k in range(1, len(w) + 1)}
                  for sents in split]
    if len({i for i, _, _ in pool}) < 2:
        raise ValueError("cloze items need at least two documents with usable sentences")
    candidates: list[list[int]] = []  # per document, positions whose sentence can be asked about
    for sents in split:
        candidates.append([j for j in range(CONTEXT_SENTENCES, len(sents)) if _fits(sents[j])
                           and all(len(s.split()) <= 2 * MAX_WORDS for s in sents[j - CONTEXT_SENTENCES: j])])
    for c in candidates:
        rng.shuffle(c)
    items: list[dict] = []
    while len(items) < n and any(candidates):
        for doc, cands in enumerate(candidates):  # round robin: every document contributes
            if len(items) >= n or not cands:
                continue
            j = cands.pop()
            sents = split[doc]
            words = sents[j].split()
            k = _ending_length(len(words))
            true, prefix = " ".join(words[-k:]), " ".join(words[:-k])
            fitting = sorted({e for i, e, length in pool if i != doc and abs(length - k) <= 1}
                             - endings_of[doc])
            if len(fitting) < choices - 1:
                continue
            options = [true, *rng.sample(fitting, choices - 1)]
            rng.shuffle(options)
            items.append({"context": " ".join([*sents[j - CONTEXT_SENTENCES: j], prefix]), "choices": options,
                          "label": options.index(true), "document": doc, "sentence": j})
    return items


@functools.lru_cache(maxsize=1)
def _sotu_cloze_items() -> tuple[list[dict], list[dict]]:
    test = cloze_items(_documents("sotu:validation"), CLOZE_ITEMS, CLOZE_SEED)
    train_docs = _documents("sotu:train")[::10]  # a spread of years is plenty for a few shots
    return test, cloze_items(train_docs, CLOZE_FEWSHOT_ITEMS, CLOZE_SEED + 1)


def sotu_cloze(**_: Any):
    """``amoeba_sotu_cloze``: test from ``sotu:validation``, few-shot ``train`` from ``sotu:train``
    (the items are built once per process)."""
    import datasets

    test, train = _sotu_cloze_items()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(test),
                                 "train": datasets.Dataset.from_list(train)})


@functools.lru_cache(maxsize=1)
def _sotu_cloze_calib_items() -> list[dict]:
    train_docs = _documents("sotu:train")
    return cloze_items([d for i, d in enumerate(train_docs) if i % 10], 2 * CLOZE_ITEMS, CLOZE_SEED + 2)


def sotu_cloze_calib(**_: Any):
    """``amoeba_sotu_cloze_calib``: the cloze task for *calibration* (e.g. AmoebaLLM's depth DP).

    Its 400 test items come from ``sotu:train`` only, from the addresses the few-shot items do not use
    (all but every 10th), so calibrating on it never sees the held-out ``sotu:validation`` text that
    ``amoeba_sotu_cloze`` tests on. Few-shot ``train`` is ``amoeba_sotu_cloze``'s. The items are built
    once per process (a few seconds), since a search evaluates the task many times."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_sotu_cloze_calib_items()),
                                 "train": datasets.Dataset.from_list(_sotu_cloze_items()[1])})


__all__ = ["brown_ppl", "cloze_items", "moby_ppl", "sentences", "sotu_cloze", "sotu_cloze_calib", "sotu_ppl"]
