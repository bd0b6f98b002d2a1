#!/usr/bin/env bash
# Device check on a machine with an NVIDIA GPU: CUDA parity on the official fixtures C and D
# (prefill, greedy steps, perplexity; within TF32's rounding, see tests/backends.rs), passkey
# retrieval on CUDA, and prefill and step times on CUDA against the same machine's CPU, printed as
# one table. CI never runs this (it has no GPU).
# The GPU machine needs the NVIDIA driver (libcuda) and NVRTC, not a Rust toolchain or a network:
#
#   scripts/gpu-check.sh              build here with `--features wgpu,cuda,remote`, then check here
#   scripts/gpu-check.sh pack [MIB]   build here and pack the binaries and the model into parts of
#                                     at most MIB MiB (default 44) under .gpu/ (gitignored), for a
#                                     machine that reaches no registry
#   scripts/gpu-check.sh stage        there: copy what was carried of .gpu/ to /tmp/focusllm-gpu
#                                     (one call per part when a call carries only so much)
#   scripts/gpu-check.sh run          there: unpack what was staged and check
#
# Environment: LENGTHS (passkey lengths, default 8192,16384,32768), SEEDS (2), BENCH_LENGTHS
# (4096,8192,16384; the first row takes CUDA's kernel compilation), OUT (where logs and JSON are
# written, default /tmp/focusllm-gpu/out).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
FEATURES=wgpu,cuda,remote # the README's test features, so the build shares the test build's cache
STAGE=/tmp/focusllm-gpu

# Builds the `focusllm` command and the backends test program; prints the test program's path.
build() {
  cargo build --release --features "$FEATURES" --bin focusllm >&2
  cargo test --release --features "$FEATURES" --test backends --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "backends" and m.get("executable"):
        print(m["executable"])'
}

pack() {
  local mib=${1:-44}
  local tests
  tests=$(build | tail -n 1)
  bash scripts/fetch-model.sh >&2
  local model=${FOCUSLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/focusllm}/SmolLM2-135M-Instruct.Q4_1.gguf
  rm -rf .gpu && mkdir -p .gpu/pack/bin
  cp target/release/focusllm .gpu/pack/bin/focusllm
  cp "$tests" .gpu/pack/bin/backends
  strip .gpu/pack/bin/*
  cp "$model" .gpu/pack/
  # The test program finds its fixtures under the checkout it was built in.
  pwd > .gpu/pack/built-in
  tar -C .gpu/pack -cf - . | xz -T0 -6 > .gpu/pack.tar.xz
  rm -rf .gpu/pack
  (cd .gpu && sha256sum pack.tar.xz > pack.sha256 && split -b "${mib}M" -d pack.tar.xz part- \
    && rm pack.tar.xz)
  du -sh .gpu/* >&2
  echo "carry .gpu/pack.sha256 and each part in calls of their own, each running" >&2
  echo "'bash scripts/gpu-check.sh stage', then 'bash scripts/gpu-check.sh run':" >&2
  ls .gpu/*
}

stage() {
  mkdir -p "$STAGE/parts"
  find .gpu -maxdepth 1 -type f -exec cp {} "$STAGE/parts/" \;
  ls -l "$STAGE/parts"
}

unpack() {
  cat "$STAGE"/parts/part-[0-9]* > "$STAGE/pack.tar.xz"
  (cd "$STAGE" && sha256sum --check parts/pack.sha256) \
    || { echo "the staged parts do not make the packed file (a part missing?)" >&2; exit 1; }
  rm -rf "$STAGE/unpacked" && mkdir -p "$STAGE/unpacked"
  xz -dc "$STAGE/pack.tar.xz" | tar -C "$STAGE/unpacked" -xf -
  export FOCUSLLM_HOME=$STAGE/home
  mkdir -p "$FOCUSLLM_HOME"
  mv "$STAGE/unpacked/"*.gguf "$FOCUSLLM_HOME/"
  local built_in
  built_in=$(cat "$STAGE/unpacked/built-in")
  if [ "$(cd "$built_in" 2>/dev/null && pwd -P)" != "$(pwd -P)" ]; then
    [ -e "$built_in" ] && { echo "$built_in exists and is not this checkout" >&2; exit 1; }
    mkdir -p "$(dirname "$built_in")" && ln -s "$(pwd -P)" "$built_in"
  fi
  FOCUSLLM_BIN=$STAGE/unpacked/bin/focusllm
  TESTS_BIN=$STAGE/unpacked/bin/backends
}

# Runs a stage with a time limit, its output to the terminal and $OUT/NAME.log; prints its seconds.
timed() {
  local name=$1 limit=$2
  shift 2
  local start
  start=$(date +%s)
  set +e
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" >&2
  local rc=${PIPESTATUS[0]}
  set -e
  echo "$rc $(( $(date +%s) - start ))"
}

check() {
  OUT=${OUT:-$STAGE/out}
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" \
    || { echo "no NVIDIA GPU answers nvidia-smi" >&2; exit 1; }
  # burn's CUDA backend compiles its kernels at run time with NVRTC, loaded by name: where the
  # loader does not know it, point it at a CUDA toolkit's or pip wheel's copy.
  if ! ldconfig -p | grep -q libnvrtc; then
    local nvrtc
    nvrtc=$(find /usr/local/cuda*/lib64 /usr/local/lib/python3*/dist-packages/nvidia /opt/*/.venv/lib \
      -name 'libnvrtc.so*' 2>/dev/null | head -n 1 || true)
    [ -n "$nvrtc" ] && export LD_LIBRARY_PATH=$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  local lengths=${LENGTHS:-8192,16384,32768} seeds=${SEEDS:-2} bench=${BENCH_LENGTHS:-4096,8192,16384}
  local parity passkey bench_cuda bench_cpu
  parity=$(timed parity 300 "$TESTS_BIN" cuda:: --nocapture --test-threads 1)
  passkey=$(timed passkey 300 "$FOCUSLLM_BIN" passkey --backend cuda --lengths "$lengths" \
    --seeds "$seeds" --quiet)
  bench_cuda=$(timed bench-cuda 200 "$FOCUSLLM_BIN" bench --backend cuda --weights f32 \
    --lengths "$bench" --methods focus,plain --steps 3 --batch-compare 0 --json --quiet)
  # f32 weights on both, so that the rows compare the devices, not the weights' format.
  bench_cpu=$(timed bench-cpu 300 "$FOCUSLLM_BIN" bench --backend cpu --weights f32 \
    --lengths "$bench" --methods focus,plain --plain-max 8192 --steps 3 --batch-compare 0 --json \
    --quiet)
  grep -q "test result: ok. [1-9]" "$OUT/parity.log" || parity="FAILED ${parity#* }"
  # The tests pass without checking anything where CUDA does not start: say so.
  grep -q "SKIP:" "$OUT/parity.log" && parity="SKIPPED (CUDA did not start) ${parity#* }"

  echo
  echo "GPU: $(cat "$OUT/gpu.txt"); CPU: $(nproc) cores"
  echo
  echo "| check | exit code, seconds |"
  echo "|---|---|"
  echo "| parity C, D on cuda (TF32 tolerance), f32 matmul precision | $parity |"
  echo "| passkey on cuda ($lengths, $seeds seeds) | $passkey |"
  echo "| bench on cuda ($bench) | $bench_cuda |"
  echo "| bench on the cpu ($bench) | $bench_cpu |"
  echo
  grep -E "^test |test result|tokens equal|f32 matmul" "$OUT/parity.log" || true
  echo
  grep -E "^\|" "$OUT/passkey.log" || true
  echo
  python3 - "$OUT/bench-cuda.log" "$OUT/bench-cpu.log" <<'PY'
import json, sys
print("| backend | method | tokens | prefill s | prompt tok/s | step s | generated tok/s | peak RSS MiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for path, name in zip(sys.argv[1:], ["cuda", "cpu"]):
    lines = [l for l in open(path) if l.startswith('{"')]
    try:
        rows = json.loads(lines[-1])["rows"]
    except Exception as e:
        print(f"| {name} | no JSON ({e}) |")
        continue
    for r in rows:
        get = lambda k: r.get(k) if r.get(k) is not None else float("nan")
        print(f"| {name} | {r['method']} | {r['tokens']} | {get('prefill_s'):.2f} | "
              f"{get('tokens_per_s'):.0f} | {get('step_s'):.3f} | "
              f"{get('generated_per_s'):.1f} | {get('peak_rss_mb'):.0f} |")
PY
}

case ${1:-} in
  pack) pack "${2:-}" ;;
  stage) stage ;;
  run)
    # Not `unpack && check`: bash ignores `set -e` inside the left side of `&&`.
    unpack
    check
    ;;
  "")
    TESTS_BIN=$(build | tail -n 1)
    FOCUSLLM_BIN=target/release/focusllm
    bash scripts/fetch-model.sh
    check
    ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
