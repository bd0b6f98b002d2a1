#!/usr/bin/env bash
# Device check for a machine with an NVIDIA GPU: builds with the `cuda` feature, runs the parity
# tests on the GPU (official fixtures C and D: prefill, greedy, perplexity) and the passkey example,
# and prints a table. CI never runs this (it has no GPU). Needs the NVIDIA driver (libcuda); no CUDA
# toolkit is needed to build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "no NVIDIA GPU answers nvidia-smi" >&2; exit 1; }
bash scripts/fetch-model.sh

start=$(date +%s)
cargo build --release --features cuda --examples --tests 2>&1 | tail -n 2
build_s=$(( $(date +%s) - start ))

start=$(date +%s)
parity=ok
cargo test --release --features cuda --test backends cuda -- --nocapture 2>&1 | tee /tmp/focusllm-gpu-parity.log | grep -E "^test |SKIP" || true
grep -q "SKIP" /tmp/focusllm-gpu-parity.log && parity="skipped (GPU did not start)"
grep -q "test result: ok" /tmp/focusllm-gpu-parity.log || parity=FAILED
parity_s=$(( $(date +%s) - start ))

lengths=${LENGTHS:-8192,16384,32768}
start=$(date +%s)
cargo run --release --features cuda --example passkey -- --backend cuda --lengths "$lengths" --seeds "${SEEDS:-2}" --quiet \
  | tee /tmp/focusllm-gpu-passkey.md
passkey_s=$(( $(date +%s) - start ))

echo
echo "| check | result | seconds |"
echo "|---|---|---:|"
echo "| build (cuda) | ok | $build_s |"
echo "| parity C, D on cuda (1e-3) | $parity | $parity_s |"
echo "| passkey on cuda ($lengths) | see table above | $passkey_s |"
