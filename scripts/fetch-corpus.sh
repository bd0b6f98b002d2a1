#!/usr/bin/env bash
# Builds the long public-domain prose used for training and evaluation: the King James Bible from
# Debian's `bible-kjv` package (text and retrieval program), written as plain paragraphs (verse
# references dropped, one chapter per paragraph) into the focusllm cache ($FOCUSLLM_HOME, else
# $XDG_CACHE_HOME/focusllm, else ~/.cache/focusllm)/corpus/:
#   kjv-old-testament.txt  training prose (--text of examples/train.rs)
#   kjv-new-testament.txt  held-out prose for evaluations (examples/longdoc.rs); no training run reads it
# Needs apt-get (as root, or sudo) the first time.
set -euo pipefail

dir=${FOCUSLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/focusllm}/corpus
if [ -s "$dir/kjv-old-testament.txt" ] && [ -s "$dir/kjv-new-testament.txt" ]; then
  echo "corpus present: $dir"
  exit 0
fi
if ! command -v bible >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends bible-kjv
fi
mkdir -p "$dir"
# `bible -f` prints one verse per line as "Book1:1 text"; a chapter becomes one paragraph.
dump() {
  bible -f "$1" | python3 -c '
import re, sys
out, chapter = [], None
for line in sys.stdin:
    m = re.match(r"^(\S+?)(\d+):(\d+) (.*)$", line.rstrip("\n"))
    if not m:
        continue
    key = (m.group(1), m.group(2))
    if key != chapter:
        out.append("\n\n" if chapter else "")
        chapter = key
    else:
        out.append(" ")
    out.append(m.group(4).strip())
sys.stdout.write("".join(out) + "\n")
'
}
dump "Genesis 1:1-Malachi 4:6" > "$dir/kjv-old-testament.txt.tmp"
dump "Matthew 1:1-Revelation 22:21" > "$dir/kjv-new-testament.txt.tmp"
for f in kjv-old-testament kjv-new-testament; do
  [ "$(wc -w < "$dir/$f.txt.tmp")" -gt 100000 ] || { echo "$f: the dump is too short" >&2; exit 1; }
  mv "$dir/$f.txt.tmp" "$dir/$f.txt"
done
wc -w "$dir"/kjv-*.txt
