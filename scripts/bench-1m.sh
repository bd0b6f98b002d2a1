#!/bin/bash
# The 1M-token memory row of BENCHMARKS.md (issue 13): one FocusLLM prefill of 1,048,576 tokens in
# frozen mode (or exact mode with 8-bit caches), its peak resident memory and time, the resident
# set sampled every 20 s. Frozen rows are resumable: the candidates of every decoded chunk batch
# are kept under $OUT/ckpt (`bench --checkpoint`), so running this again after a stop continues
# where it stopped, and the row's time adds the earlier runs' decoding time.
#
#   bash scripts/bench-1m.sh [frozen|exact] [OUT]      (default: frozen runs/bench-1m)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-frozen}
OUT=${2:-runs/bench-1m}
mkdir -p "$OUT"
cargo build --release --bin focusllm
BIN=target/release/focusllm
case "$MODE" in
  frozen) FLAGS=(--step-mode frozen --cache-dtype f32 --checkpoint "$OUT/ckpt") ;;
  exact) FLAGS=(--step-mode exact --cache-dtype i8) ;;
  *) echo "mode: frozen or exact, not $MODE" >&2; exit 2 ;;
esac
RUN=$(find "$OUT" -maxdepth 1 -name "$MODE-run*.json" | wc -l)
JSON="$OUT/$MODE-run$RUN.json"
RSS="$OUT/$MODE-run$RUN.rss"
nice -n 10 "$BIN" bench --lengths 1048576 --methods focus --steps 2 --batch-compare 0 --json \
  "${FLAGS[@]}" > "$JSON" 2> "$OUT/$MODE-run$RUN.log" &
PID=$!
echo "pid $PID start $(date -Is)" > "$RSS"
while kill -0 "$PID" 2>/dev/null; do
  echo "$(date +%s) $(awk '/VmRSS|VmHWM/{printf "%s %s ", $1, $2}' "/proc/$PID/status" 2>/dev/null)" >> "$RSS"
  sleep 20
done
wait "$PID" && echo "done: $JSON" || echo "stopped (rc $?): run again to resume" >&2
