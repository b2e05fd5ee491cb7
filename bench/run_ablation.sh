#!/usr/bin/env bash
# Ablation of the loop's levers (issue 15) on the quality model: the rlm method on every family at 32K tokens,
# 3 items each (the same items as bench/run_quality.sh, whose rlm rows are the card's setting), once per
# lever setting: each of the card's levers switched off alone, and constrain switched on.
#   bench/run_ablation.sh OUT [FAMILY...]      (default: every family; RESULTS.md's rows: niah)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/quality-ablation}
shift $(( $# > 0 ? 1 : 0 ))
FAMILIES=("${@:-niah oolong pairs codeqa}")
read -r -a FAMILIES <<< "${FAMILIES[*]}"
PY=${PYTHON:-python3}
declare -A SETTING=([toolkit-off]="toolkit=off" [resample-off]="resample=off" [recover-off]="recover=off"
                    [ground-off]="ground=off" [constrain-on]="constrain=on")
for name in toolkit-off resample-off recover-off ground-off constrain-on; do
  for fam in "${FAMILIES[@]}"; do
    "$PY" -m rlm_local.cli bench "$fam" --lengths 32k --n 3 --methods rlm --model quality --max-iterations 12 \
      --max-timeout 600 --concurrency 2 --resume --no-plots --lever "${SETTING[$name]}" --out "$OUT/$name/$fam"
  done
done
