#!/usr/bin/env bash
# Install size and time, and the demo, from a clean clone of COMMIT with a fresh venv and an empty model cache
# (pip's own download cache is whatever the machine has). Prints one JSON line; scripts/results/bench_install.json
# holds the measured lines (the install before and after the light default install of issue 18).
# usage: scripts/bench_install.sh LABEL COMMIT "install command"
set -u
LABEL=$1; COMMIT=$2; INSTALL=$3
D=/tmp/inst_$LABEL; rm -rf $D; git clone -q /work/main $D; cd $D; git checkout -q $COMMIT
export RLM_LOCAL_CACHE=$D/.cache-empty
t0=$(date +%s.%N)
bash -c "$INSTALL" > $D/install.log 2>&1; rc=$?
t1=$(date +%s.%N)
size=$(du -sm .venv | cut -f1)
torch=$(.venv/bin/python -c "import importlib.util as u; print(bool(u.find_spec('torch')))")
t2=$(date +%s.%N)
.venv/bin/rlm-local run --demo > $D/demo.out 2> $D/demo.err; drc=$?
t3=$(date +%s.%N)
python3 - <<PY
import json
print(json.dumps({"label": "$LABEL", "commit": "$COMMIT", "install": """$INSTALL""", "install_rc": $rc,
  "install_seconds": round($t1 - $t0, 1), "venv_mb": $size, "torch_installed": "$torch" == "True",
  "demo_rc": $drc, "demo_seconds": round($t3 - $t2, 1), "demo_tail": open("$D/demo.err").read().strip().splitlines()[-1][:200]}))
PY
