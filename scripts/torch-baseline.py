#!/usr/bin/env python3
"""Plain decoding in PyTorch + transformers, timed the way `focusllm bench --methods plain` times ours.

The baseline of issue 12's "plain prefill at least as fast as PyTorch's": the same GGUF
(SmolLM2-135M-Instruct Q4_1, dequantized to f32 by transformers at load, as we do), the same
thread count, one prefill of N tokens with SDPA attention and a KV cache, then greedy steps.
Prints one JSON line per length: prefill s, prompt tokens/s, step s, generated tokens/s.

Needs torch, transformers (with GGUF support) and gguf, e.g. in a venv outside the repository:

    python3 -m venv ~/venv-torch
    ~/venv-torch/bin/pip install torch==2.2.2 transformers==4.46.3 gguf==0.10.0 "numpy<2" \
        sentencepiece protobuf accelerate==1.1.1
    ~/venv-torch/bin/python scripts/torch-baseline.py --lengths 8192 --steps 12

The input is filler prose tokenized to exactly N tokens (timing does not depend on the words:
attention is dense), so compare it with `focusllm bench --lengths N --methods plain`.
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", default=os.path.expanduser(
        "~/.cache/focusllm/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--lengths", default="8192")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folder, name = os.path.split(args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, torch_dtype=torch.float32, attn_implementation="sdpa")
    # The GGUF has no output matrix: SmolLM2 ties its LM head to the embedding table.
    model.lm_head.weight = model.model.embed_tokens.weight
    model.eval()
    ids_all = tokenizer(FILLER * 4000, return_tensors="pt").input_ids
    with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
        model(ids_all[:, :64], use_cache=True)

    for n in (int(x) for x in args.lengths.split(",")):
        ids = ids_all[:, :n]
        assert ids.shape[1] == n, f"filler too short for {n} tokens"
        with torch.inference_mode():
            start = time.perf_counter()
            out = model(ids, use_cache=True)
            prefill_s = time.perf_counter() - start
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(args.steps):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            step_s = (time.perf_counter() - start) / max(args.steps, 1)
        print(json.dumps({
            "impl": f"torch {torch.__version__} / transformers, sdpa",
            "threads": torch.get_num_threads(),
            "tokens": n,
            "prefill_s": prefill_s,
            "tokens_per_s": n / prefill_s,
            "step_s": step_s,
            "generated_per_s": 1.0 / step_s,
        }), flush=True)


if __name__ == "__main__":
    main()
