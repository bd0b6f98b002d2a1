#!/usr/bin/env bash
# Issue 15 cost model: chunks on two shard servers on loopback; the bench row's io_prefill and
# io_per_step are the bytes moved (machine-wide, /proc/net/dev: keep other traffic off).
# Needs `focusllm` built with the `remote` feature (FOCUSLLM_BIN, default target/release/focusllm).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${FOCUSLLM_BIN:-target/release/focusllm}
lengths=${LENGTHS:-8192}
"$bin" serve --port 39001 > /dev/null 2>&1 &
s1=$!
"$bin" serve --port 39002 > /dev/null 2>&1 &
s2=$!
trap 'kill $s1 $s2 2> /dev/null' EXIT
sleep 2
"$bin" bench --devices ws://127.0.0.1:39001,ws://127.0.0.1:39002 --lengths "$lengths" \
  --methods focus --steps 2 --batch-compare 0 --batch 1 --json --quiet
