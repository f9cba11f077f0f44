#!/usr/bin/env bash
# Every GPU check in one command (scripts/gpu_check.py): run it whenever a GPU is lent, e.g. through the
# device tool: `scripts/gpu_check.sh --json $OUT/gpu_check.json`. It needs no install of dflow: the
# checkout is put on PYTHONPATH and the machine's own torch / lightning / transformers are used.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-$(command -v python3)}
exec "$PYTHON" scripts/gpu_check.py "$@"
