"""Greedy decoding in vLLM, run by the vLLM environment's Python (it imports nothing of ours).

``python vllm_runner.py SPEC.json OUT.json``; SPEC holds ``model`` (a directory), ``prompts`` (lists
of token ids), ``max_tokens`` and ``dtype``. OUT gets, per prompt, the generated ids and the
log-probability vLLM gave each of them.
"""
import json
import sys


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model"], dtype=spec.get("dtype", "float32"), max_model_len=spec.get("max_model_len", 256),
              enforce_eager=True, trust_remote_code=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], logprobs=1, ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]], params)
    result = []
    for out in outputs:
        gen = out.outputs[0]
        result.append({"tokens": list(gen.token_ids),
                       "logprobs": [step[token].logprob for step, token in zip(gen.logprobs, gen.token_ids)]})
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
