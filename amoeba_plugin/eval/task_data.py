"""Datasets of the packaged lm-eval tasks (``amoeba_plugin/eval/tasks/*.yaml``), built from the corpora
shipped in :mod:`amoeba_plugin.data`: nothing is downloaded.

The YAMLs point here with ``custom_dataset: !function amoeba_plugin.eval.task_data.<fn>``; lm-eval calls
the function with the task's metadata (and, from its CLI, the ``--model_args``) as keyword arguments,
which are ignored. Each returns a ``datasets.DatasetDict``.

* perplexity tasks: one row per document, column ``text``;
* ``amoeba_sotu_cloze``: which sentence comes next? ``context`` (the two sentences before), ``choices``
  (the true next sentence and three distractors, sentences of similar length taken from *other*
  addresses) and ``label`` (index of the true one). Built from the held-out ``sotu:validation`` split
  with a fixed seed, so the items are the same on every machine; the few-shot split ``train`` comes
  from ``sotu:train`` the same way.
"""
from __future__ import annotations

import random
import re
from typing import Any

#: items in the test split of amoeba_sotu_cloze (a run on the embedded model takes seconds)
CLOZE_ITEMS = 200
#: items in its few-shot (train) split
CLOZE_FEWSHOT_ITEMS = 50
CLOZE_SEED = 1234
#: sentences shorter or longer than this (in words) are neither targets nor distractors
MIN_WORDS, MAX_WORDS = 6, 40
CONTEXT_SENTENCES = 2
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


def cloze_items(documents: list[str], n: int, seed: int = CLOZE_SEED, choices: int = 4) -> list[dict]:
    """``n`` next-sentence items from ``documents`` (deterministic for a given seed).

    Every item's context and true continuation come from one document; the ``choices - 1``
    distractors are sentences of other documents whose word count is within 25 % of the true one's
    (widened step by step when too few fit), so length alone does not give the answer away.
    """
    rng = random.Random(seed)
    split = [sentences(d) for d in documents]
    pool = [(i, s, len(s.split())) for i, sents in enumerate(split) for s in sents if _fits(s)]
    candidates: list[list[int]] = []  # per document, positions whose sentence can be a target
    for sents in split:
        candidates.append([j for j in range(CONTEXT_SENTENCES, len(sents)) if _fits(sents[j])
                           and all(len(s.split()) <= 2 * MAX_WORDS for s in sents[j - CONTEXT_SENTENCES: j])])
    for c in candidates:
        rng.shuffle(c)
    if len({i for i, _, _ in pool}) < 2:
        raise ValueError("cloze items need at least two documents with usable sentences")
    items: list[dict] = []
    used: set[tuple[int, int]] = set()
    while len(items) < n and any(candidates):
        for doc, cands in enumerate(candidates):  # round robin: every document contributes
            if len(items) >= n or not cands:
                continue
            j = cands.pop()
            if (doc, j) in used:
                continue
            used.add((doc, j))
            sents = split[doc]
            true = sents[j]
            words = len(true.split())
            distractors: list[str] = []
            for tolerance in (0.25, 0.5, 1.0, 10.0):
                fitting = [s for i, s, w in pool if i != doc and abs(w - words) <= tolerance * words
                           and s != true]
                if len(set(fitting)) >= choices - 1:
                    distractors = rng.sample(sorted(set(fitting)), choices - 1)
                    break
            if len(distractors) < choices - 1:
                continue
            options = [true, *distractors]
            rng.shuffle(options)
            items.append({"context": " ".join(sents[j - CONTEXT_SENTENCES: j]), "choices": options,
                          "label": options.index(true), "document": doc, "sentence": j})
    return items


def sotu_cloze(**_: Any):
    """``amoeba_sotu_cloze``: test from ``sotu:validation``, few-shot ``train`` from ``sotu:train``."""
    import datasets

    test = cloze_items(_documents("sotu:validation"), CLOZE_ITEMS, CLOZE_SEED)
    train_docs = _documents("sotu:train")[::10]  # a spread of years is plenty for a few shots
    train = cloze_items(train_docs, CLOZE_FEWSHOT_ITEMS, CLOZE_SEED + 1)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(test),
                                 "train": datasets.Dataset.from_list(train)})


__all__ = ["brown_ppl", "cloze_items", "moby_ppl", "sentences", "sotu_cloze", "sotu_ppl"]
