#!/usr/bin/env bash
# Held-out retrieval: facts phrased unlike every training template (core/train/data.rs), hidden at a
# random depth in prose no training run reads (the KJV New Testament, scripts/fetch-corpus.sh), asked
# through examples/longdoc.rs (raw prompt). One line of JSON per trial goes to $OUT (default
# runs/eval-longdoc.jsonl); a table of accuracy per length and method is printed at the end.
# Trials already in $OUT (same method, length and seed) are skipped: a stopped run resumes.
#
#   scripts/eval-longdoc.sh LENGTHS SEEDS METHOD [longdoc flags...]
#   scripts/eval-longdoc.sh 16384,32768 5 adapter --adapter adapters/x.safetensors
#   scripts/eval-longdoc.sh 16384 5 untrained --untrained --local-window 128 --chunk-size 512 \
#       --prompt-cap 24 --step-mode exact      # untrained candidates read with the adapter's sizes
set -euo pipefail
cd "$(dirname "$0")/.."
lengths=${1:?lengths}; seeds=${2:?seeds}; method=${3:?method}; shift 3
out=${OUT:-runs/eval-longdoc.jsonl}
mkdir -p "$(dirname "$out")"
bash scripts/fetch-corpus.sh >/dev/null
text=${FOCUSLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/focusllm}/corpus/kjv-new-testament.txt
[ -n "${LONGDOC_BIN:-}" ] || cargo build --release --quiet --example longdoc
bin=${LONGDOC_BIN:-target/release/examples/longdoc}
# fact (with {key}) | question | start of the answer
facts=(
  "The lighthouse keeper wrote the number {key} on the last page of his log.|What number did the lighthouse keeper write on the last page of his log?|Answer: The lighthouse keeper wrote the number"
  "Captain Morrow's cabin on the steamer was number {key}.|What was the number of Captain Morrow's cabin?|Answer: Captain Morrow's cabin was number"
  "The baker needs exactly {key} grams of flour for the festival bread.|How many grams of flour does the baker need for the festival bread?|Answer: The baker needs"
  "Agent Lina's badge carries the identifier {key}.|What identifier does Agent Lina's badge carry?|Answer: Agent Lina's badge carries the identifier"
  "The old map says the treasure lies under stone number {key}.|Under which stone number does the treasure lie?|Answer: The treasure lies under stone number"
)
IFS=, read -ra lens <<< "$lengths"
for len in "${lens[@]}"; do
  for ((seed = 0; seed < seeds; seed++)); do
    if [ -f "$out" ] && python3 -c "import json,sys; sys.exit(0 if any(d.get('method')=='$method' and d.get('tokens')==$len and d.get('seed')==$seed for d in map(json.loads, open('$out'))) else 1)"; then
      continue
    fi
    read -r key depth <<< "$(python3 -c "import random; r=random.Random(1000*$len+$seed); print(r.randrange(10000,100000), round(r.uniform(0.05,0.9),3))")"
    fact=${facts[$((seed % ${#facts[@]}))]}
    IFS='|' read -r insert question start <<< "$fact"
    insert=${insert//\{key\}/$key}
    line=$("$bin" --file "$text" --raw --quiet --tokens "$len" \
      --insert "$insert" --depth "$depth" --question "$question" --answer-start "$start" \
      --expect "$key" --max-tokens 10 "$@")
    echo "$line" | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(method='$method', seed=$seed); print(json.dumps(d))" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line)
    rows[(d["method"], d["tokens"])].append(d["found"])
print("| method | tokens | found | trials |")
print("|---|---:|---:|---:|")
for (m, t), v in sorted(rows.items()):
    print(f"| {m} | {t} | {sum(v)/len(v):.2f} | {len(v)} |")
PY
