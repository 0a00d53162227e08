#!/usr/bin/env bash
# The test suite: installs what it needs into .venv, then runs pytest (the whole suite, about 2 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "vit,test,cluster,parquet"
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
