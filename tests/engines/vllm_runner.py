"""Greedy decoding in vLLM, run by the vLLM environment's Python (it imports nothing of ours).

``python vllm_runner.py SPEC.json OUT.json``. SPEC is a list of runs, each with ``model`` (a
directory), ``prompts`` (lists of token ids), ``max_tokens`` and ``dtype``; they share one process
(the engine's import is most of a run's cost). OUT gets, per run and prompt, the generated ids and
the log-probability vLLM gave each of them, or the error that stopped the run.
"""
import gc
import json
import sys


def main() -> None:
    with open(sys.argv[1]) as f:
        runs = json.load(f)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    results = []
    for run in runs:
        try:
            llm = LLM(model=run["model"], dtype=run.get("dtype", "float32"), max_model_len=run.get("max_model_len", 256),
                      enforce_eager=True, trust_remote_code=True, seed=0)
            params = SamplingParams(temperature=0.0, max_tokens=run["max_tokens"], logprobs=1, ignore_eos=True)
            outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in run["prompts"]], params)
            got = []
            for out in outputs:
                gen = out.outputs[0]
                got.append({"tokens": list(gen.token_ids),
                            "logprobs": [step[t].logprob for step, t in zip(gen.logprobs, gen.token_ids)]})
            results.append({"model": run["model"], "outputs": got})
            del llm
            gc.collect()
        except Exception as exc:  # one broken export must not hide the others' results
            results.append({"model": run["model"], "error": f"{type(exc).__name__}: {exc}"})
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
