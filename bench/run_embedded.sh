#!/usr/bin/env bash
# The committed results in bench/RESULTS.md: every family at two lengths, all four methods, the embedded
# model on CPU. Resumable: re-running continues where a killed run stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
for fam in niah oolong pairs codeqa; do
  rlm-local bench "$fam" --lengths 1k,4k --n 2 --methods base,rlm-nosub,rlm,summary --window 2000 \
    --max-iterations 6 --max-timeout 60 --out "bench/embedded-cpu/$fam" --resume --no-plots
done
rlm-local bench report bench/embedded-cpu --markdown
