#!/usr/bin/env bash
# Issue 15 on a machine with an NVIDIA GPU: chunk shards on CUDA devices, alone and beside the CPU,
# against the reference (official model C), and a timing of one device against shards.
#
# Build where cargo can reach the registry, then run here:
#   cargo test --release --features wgpu,cuda,remote --test backends --no-run   # prints the binary
#   SHARDS_TEST=target/release/deps/backends-<hash> scripts/gpu-shards.sh [cuda:0,cuda:0]
# Several GPUs: name them, e.g. `scripts/gpu-shards.sh cuda:0,cuda:1`.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-cuda:0,cuda:0}
test_bin=${SHARDS_TEST:?set SHARDS_TEST to the backends test binary}
command -v nvidia-smi > /dev/null && nvidia-smi -L
echo "== shards on $devices, then on $devices and the cpu"
FOCUSLLM_TEST_DEVICES=$devices "$test_bin" --nocapture --test-threads 1 gpu_shards
echo "== three cpu shards"
"$test_bin" --nocapture --test-threads 1 three_cpu_shards
