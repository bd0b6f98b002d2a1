#!/usr/bin/env bash
# A long fuzz campaign over every loader (tests/fuzz_loaders.rs): safetensors (single file and
# sharded), config.json, GGUF (model and tokenizer metadata), candidate adapters, tokenizer.json.
# Prints the cases per loader and per outcome (ok / typed error / panic / huge allocation).
#
# Usage: scripts/fuzz-campaign.sh [CASES] [SEED]
#   CASES  total cases over all loaders (default 50000; split by fixed weights per loader)
#   SEED   the run's seed, decimal or 0x hex (default: random, printed)
# Environment: CARGO_FLAGS (extra cargo flags, e.g. "--features wgpu"), FOCUSLLM_FUZZ_HANG_SECS.
#
# A failing case is reproduced alone, loudly, with its scratch directory kept:
#   FOCUSLLM_FUZZ_SEED=<seed> FOCUSLLM_FUZZ_CASE=<loader>:<index> \
#     cargo test --release --test fuzz_loaders -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

cases=${1:-50000}
seed=${2:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
log=$(mktemp "${TMPDIR:-/tmp}/focusllm-fuzz-campaign.XXXXXX")
echo "fuzz campaign: $cases cases, seed $seed (full log: $log)"

set +e
# shellcheck disable=SC2086 # CARGO_FLAGS is a list of flags
FOCUSLLM_FUZZ_CASES=$cases FOCUSLLM_FUZZ_SEED=$seed \
    cargo test --release ${CARGO_FLAGS:-} --test fuzz_loaders -- --nocapture fuzz_ >"$log" 2>&1
status=$?
set -e

# Per loader, from the `fuzz-summary key=value ...` lines.
awk '
/^fuzz-summary / {
    for (i = 2; i <= NF; i++) if (split($i, kv, "=") == 2) v[kv[1]] = kv[2]
    n++
    row[n] = sprintf("%-16s %9d %9d %12d %7d %11d %9.1f", v["loader"], v["cases"], v["ok"],
                     v["typed_error"], v["panic"], v["huge_alloc"], v["seconds"])
    c += v["cases"]; o += v["ok"]; t += v["typed_error"]; p += v["panic"]; h += v["huge_alloc"]
}
END {
    printf "\n%-16s %9s %9s %12s %7s %11s %9s\n", "loader", "cases", "ok", "typed_error", "panic", "huge_alloc", "seconds"
    for (i = 1; i <= n; i++) print row[i]
    printf "%-16s %9d %9d %12d %7d %11d\n", "total", c, o, t, p, h
}' "$log"

# Per loader and outcome, from the `fuzz-outcome loader=L count=N outcome=TEXT` lines.
echo
echo "outcomes (loader, count, outcome):"
awk '
/^fuzz-outcome / {
    loader = $2; sub(/^loader=/, "", loader)
    count = $3; sub(/^count=/, "", count)
    outcome = $0; sub(/^.* outcome=/, "", outcome)
    printf "  %-16s %9d  %s\n", loader, count, outcome
}' "$log"

if [ "$status" -ne 0 ]; then
    echo
    echo "FAILED (exit status $status)."
    grep -E "panic in case|allocated [0-9]+ bytes at once|requested [0-9]+ bytes|HANG|reproduce one with" "$log" || true
    if ! grep -q "^test result:" "$log"; then
        echo "The test process died before reporting (an abort, a hang or a build error): see $log;"
        echo "rerun with FOCUSLLM_FUZZ_TRACE=1 to print every case id before it runs."
    fi
    exit "$status"
fi
echo
echo "no panic, no huge allocation, no hang (seed $seed)"
rm -f "$log"
