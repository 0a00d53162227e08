#!/usr/bin/env bash
# The main job: every experiment at the default scale, then one report (runs/reproduce-default/report.md).
# Usage: bash scripts/reproduce.sh [--scale smoke|default|paper] [--out DIR] [--device cuda] [--jobs N]
# Experiments run one per core at a time (--jobs, default: the number of cores), each on one torch thread;
# with --executor dask the cluster parallelises instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "vit,pretrained,test"
export MPLBACKEND=Agg
jobs=()
case " $* " in
  *" --jobs "*|*" --jobs="*|*" --executor "*|*" --executor="*) ;;
  *) jobs=(--jobs "$(nproc 2>/dev/null || echo 1)") ;;
esac
exec .venv/bin/vitheory reproduce "${jobs[@]}" "$@"
