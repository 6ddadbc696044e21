#!/usr/bin/env bash
# The prepared device check (issue "Tr(F) measured precisely and cheaply", GPU section), about
# 5 minutes on one GPU. Run it from the repository root on the device machine, whose python3
# holds a CUDA build of torch (and scikit-learn, pandas, scipy, yaml) but no Ray, MLflow or
# Optuna: so the trial runs through trainables.loop, not through Ray Tune.
#   bash benchmarks/gpu_check.sh            # log to stdout and to ${OUT:-.}/gpu_check.log
# Optional: BackPACK, Opacus and nngeometry rows of the overhead table appear when their wheels
# are importable (carried as described in the device tool's README); otherwise they say so.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log="${OUT:-.}/gpu_check.log"
{
  nvidia-smi -L
  timeout 300 "$py" benchmarks/gpu_check.py
  timeout 240 "$py" benchmarks/fisher_overhead.py --device cuda --repeats 21 --threads 8
} 2>&1 | tee "$log"
