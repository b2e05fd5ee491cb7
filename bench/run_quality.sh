#!/usr/bin/env bash
# The quality-model results in bench/RESULTS.md (issue 15): every family, all four methods, at lengths >= 4x
# the root prompt budget (the card's 8,000 tokens): base and rlm at two lengths, rlm-nosub and summary at the
# first. Resumable: re-running continues where a killed run stopped.
#   bench/run_quality.sh OUT [METHOD_GROUP] [extra bench flags...]
#     METHOD_GROUP: rlm (rlm and rlm-nosub, the loop's rows), plain (base and summary), all (default)
# The "before" rows ran the same commands from a checkout of the code before issue 15 (see RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/quality-cpu}
GROUP=${2:-all}
shift $(( $# > 2 ? 2 : $# ))
PY=${PYTHON:-python3}
run() { "$PY" -m rlm_local.cli bench "$@" --model quality --max-iterations 12 --max-timeout 600 --concurrency 2 \
          --resume --no-plots; }
declare -A LONG=([niah]=1m [oolong]=128k [pairs]=128k [codeqa]=128k)
for fam in niah oolong pairs codeqa; do
  if [[ $GROUP == rlm || $GROUP == all ]]; then
    run "$fam" --lengths "32k,${LONG[$fam]}" --methods rlm --out "$OUT/$fam" "$@"
    run "$fam" --lengths 32k --methods rlm-nosub --out "$OUT/$fam" "$@"
  fi
  if [[ $GROUP == plain || $GROUP == all ]]; then
    run "$fam" --lengths "32k,${LONG[$fam]}" --methods base --out "$OUT/$fam" "$@"
    run "$fam" --lengths 32k --methods summary --out "$OUT/$fam" "$@"
  fi
done
"$PY" -m rlm_local.cli bench report "$OUT" --markdown --no-plots
