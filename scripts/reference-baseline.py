#!/usr/bin/env python3
"""The authors' FocusLLM code on CPU, timed the way `focusllm bench --methods focus` times ours.

The baseline of issue 12's "FocusLLM prefill and exact step 3x the reference, side by side": the
official implementation (github.com/leezythu/FocusLLM, unmodified; only its unconditional
`.cuda()` calls become no-ops, as for the fixtures in `tests/fixtures/`), on the same GGUF
(SmolLM2-135M-Instruct Q4_1, dequantized to f32 by transformers at load, as we do), at the bench's
sizes (local window 2048, chunks of 2048, the reference's dynamic prompt of 512), 2 threads. One
prefill of N tokens (`inference_forward` over the whole input: every chunk, then the main
decoder), then greedy steps (`inference_forward` over the new token: every chunk extended by two
tokens, the main decoder recomputed over the local context and the tokens generated so far).
Prints one JSON line per length: prefill s, prompt tokens/s, step s, generated tokens/s.

Needs the official code checked out somewhere (`--reference`; this repository does not carry
it) and the venv of `scripts/torch-baseline.py` (torch 2.2.2, transformers 4.46.3, gguf):

    git clone https://github.com/leezythu/FocusLLM ~/FocusLLM
    ~/venv-torch/bin/python scripts/reference-baseline.py --reference ~/FocusLLM \
        --lengths 16384 --steps 2

The input is the same filler prose as `torch-baseline.py`, tokenized to exactly N tokens (the
time does not depend on the words), so compare it with `focusllm bench --lengths N --methods
focus`.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

# The official class is built from a checkpoint without candidate projections (they start as
# copies, by design): transformers' list of 120 "newly initialised" weights says nothing new.
logging.set_verbosity_error()

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)


def checkpoint_folder(gguf: str, local_window: int, stride: int, out: str) -> None:
    """Writes the GGUF's weights (f32) with a config the official code reads into `out`."""
    folder, name = os.path.split(gguf)
    stock = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    config = stock.config.to_dict()
    # FocusLLM's own fields; its candidate projections are missing from the checkpoint, so the
    # official `from_pretrained` initialises them as copies of the ordinary ones.
    config.update(local_window=local_window, memory_stride=[stride], beacon_param=["q", "k", "v", "o"])
    config["architectures"] = ["LlamaForCausalLM"]
    # Llama 2 has no pad token; the official code sizes an unused one-row embedding with it.
    config["pad_token_id"] = None
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    # The GGUF has no output matrix: SmolLM2 ties its LM head to the embedding table.
    state = {k: v.contiguous() for k, v in stock.state_dict().items() if k != "lm_head.weight"}
    from safetensors.torch import save_file

    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="a checkout of the official code")
    parser.add_argument("--gguf", default=os.path.expanduser(
        "~/.cache/focusllm/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--lengths", default="16384")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--local-window", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # The official code moves its BOS tensors and caches with `.cuda()` unconditionally.
    torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, os.path.join(os.path.abspath(args.reference), "src"))
    from activation_beacon_llama.modeling_llama import LlamaForCausalLM

    folder, name = os.path.split(args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids_all = tokenizer(FILLER * 8000, return_tensors="pt").input_ids
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_folder(args.gguf, args.local_window, args.chunk_size, tmp)
        model = LlamaForCausalLM.from_pretrained(
            tmp, torch_dtype=torch.float32, attn_implementation="sdpa")
    model.lm_head.weight = model.model.embed_tokens.weight
    model.eval()
    print(f"attention: {model.config._attn_implementation}", file=sys.stderr)

    for n in (int(x) for x in args.lengths.split(",")):
        ids = ids_all[:, :n]
        assert ids.shape[1] == n, f"filler too short for {n} tokens"
        with torch.inference_mode():
            model.memory.reset()
            start = time.perf_counter()
            out = model.inference_forward(input_ids=ids)
            prefill_s = time.perf_counter() - start
            chunks = model.memory.chunk_number
            steps = []
            token = out.logits[:, -1:].argmax(-1)
            for _ in range(args.steps):
                start = time.perf_counter()
                out = model.inference_forward(input_ids=token)
                steps.append(time.perf_counter() - start)
                token = out.logits[:, -1:].argmax(-1)
        step_s = sum(steps) / len(steps) if steps else float("nan")
        print(json.dumps({
            "impl": f"official FocusLLM, torch {torch.__version__}, {model.config._attn_implementation}",
            "threads": args.threads,
            "tokens": n,
            "chunks": chunks,
            "prefill_s": prefill_s,
            "tokens_per_s": n / prefill_s,
            "step_s": step_s,
            "steps_s": steps,
            "generated_per_s": 1.0 / step_s,
        }), flush=True)


if __name__ == "__main__":
    main()
