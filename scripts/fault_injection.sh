#!/usr/bin/env bash
# Fault injection of docs/reliability.md: kill -9 pretrain / finetune / encode / run at seeded random moments and
# during checkpoint and part writes, resume, compare with an uninterrupted run; then damage files on purpose.
# Usage: bash scripts/fault_injection.sh [TRIALS] [SEED]   (defaults: 3 trials, seed 0; ~15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" scripts/fault_injection.py --trials "${1:-3}" --write-trials 2 --seed "${2:-0}" \
  --output out/fault_injection.json
