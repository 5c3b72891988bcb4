#!/usr/bin/env bash
# The GPU check of benchmarks/gpu_check.py on a bare GPU machine that reaches no package registry:
# installs the wheels carried in .whl/ (the list and how to download them: benchmarks/RESULTS.md,
# section GPU) without an index, then runs every step. Arguments go to gpu_check.py:
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, ~8 min on one H200
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # anywhere: the same steps on the CPU, no install (CI: one script, --scripts)
# $PYTHON chooses the interpreter (default python3, the one that holds torch on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ " $* " != *" --cpu-dry-run "* ]] && ! "$PY" -c "import ale_py, gymnasium, tyro" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check.sh: ale-py, gymnasium or tyro missing and no wheels in .whl/ (see benchmarks/RESULTS.md, GPU)" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
exec "$PY" benchmarks/gpu_check.py "$@"
