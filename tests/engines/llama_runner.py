"""Greedy decoding in llama.cpp (llama-cpp-python), run by the llama.cpp environment's Python.

``python llama_runner.py SPEC.json OUT.json``; SPEC is a list of runs with ``model`` (a .gguf
file), ``prompts`` (lists of token ids), ``max_tokens`` and ``texts`` (strings whose tokenization is
reported, to check the tokenizer). OUT gets per prompt the generated ids, each step's full
log-softmax row (to compare with transformers over the whole vocabulary) and the text token ids.
"""
import json
import sys

import numpy as np


def main() -> None:
    with open(sys.argv[1]) as f:
        runs = json.load(f)
    from llama_cpp import Llama

    results = []
    for run in runs:
        try:
            llm = Llama(model_path=run["model"], n_ctx=256, n_threads=1, logits_all=True, verbose=False, seed=0)
            got = []
            for ids in run["prompts"]:
                llm.reset()
                llm.eval(ids)
                tokens, rows = [], []
                for _ in range(run["max_tokens"]):
                    logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
                    row = logits - logits.max()
                    row = row - np.log(np.exp(row).sum())
                    token = int(row.argmax())
                    tokens.append(token)
                    rows.append(row.tolist())
                    llm.eval([token])
                got.append({"tokens": tokens, "logsoftmax": rows})
            texts = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in run.get("texts", [])]
            results.append({"model": run["model"], "outputs": got, "texts": texts})
            del llm
        except Exception as exc:
            results.append({"model": run["model"], "error": f"{type(exc).__name__}: {exc}"})
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
