#!/usr/bin/env bash
# The main job: every experiment at the default scale, then one report (runs/reproduce-default/report.md).
# Usage: bash scripts/reproduce.sh [--scale smoke|default|paper] [--out DIR] [--device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "vit,pretrained,test"
export MPLBACKEND=Agg
exec .venv/bin/vitheory reproduce "$@"
