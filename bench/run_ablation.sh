#!/usr/bin/env bash
# Ablation of the loop's levers (issue 15) on the quality model: the rlm method on every family at 32K tokens,
# 3 items each (the same items as bench/run_quality.sh), once per lever setting: all the card's levers
# ("card"), each of them switched off alone, and constrain switched on.
#   bench/run_ablation.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/quality-ablation}
PY=${PYTHON:-python3}
declare -A SETTING=([no-toolkit]="toolkit=off" [no-resample]="resample=off" [no-recover]="recover=off"
                    [no-ground]="ground=off" [constrain]="constrain=on")
for name in no-toolkit no-resample no-recover no-ground constrain; do
  for fam in niah oolong pairs codeqa; do
    "$PY" -m rlm_local.cli bench "$fam" --lengths 32k --n 3 --methods rlm --model quality --max-iterations 12 \
      --max-timeout 600 --concurrency 2 --resume --no-plots --lever "${SETTING[$name]}" --out "$OUT/$name/$fam"
  done
done
