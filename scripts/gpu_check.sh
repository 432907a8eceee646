#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): at most 8 minutes on one GPU machine, logs and
# summary.json under --out (default gpu_check_out/, or $OUT), one JSON line per step.
#   usage: scripts/gpu_check.sh [--cpu-only] [--out DIR] [--pack DIR]
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
