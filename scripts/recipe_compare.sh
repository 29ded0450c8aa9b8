#!/usr/bin/env bash
# The paired tests of the whole recipe over seeds (after scripts/recipe_seeds.sh): each later stage
# against the one before it, and DupMAE pre-training against none at each stage, alone and fused
# with BM25, on test and dev. Per query, each system's metric is averaged over the seeds first
# (scripts/seed_pooled_test.py).
#
#   bash scripts/recipe_compare.sh OUT [REPRESENTATION]        # REPRESENTATION: cls (default) or dupmae
set -euo pipefail
out=${1:?usage: recipe_compare.sh OUT [REPRESENTATION]}
r=${2:-cls}
python=${PYTHON:-python}
pairs=(
  "ft-r2-$r ft-$r" "ft-distill-$r ft-r2-$r" "ft-distill-$r ft-$r"
  "dupmae-ft-r2-$r dupmae-ft-$r" "dupmae-ft-distill-$r dupmae-ft-r2-$r" "dupmae-ft-distill-$r dupmae-ft-$r"
  "dupmae-ft-$r ft-$r" "dupmae-ft-r2-$r ft-r2-$r" "dupmae-ft-distill-$r ft-distill-$r"
)
for split in test dev; do
  for hybrid in "" "+bm25"; do
    for pair in "${pairs[@]}"; do
      set -- $pair
      line=$("$python" scripts/seed_pooled_test.py "$out"/results-s*.json --system "$1$hybrid" \
          --against "$2$hybrid" --split "$split" | tail -1)
      echo "$split | $1$hybrid vs $2$hybrid | ${line#*: }"
    done
  done
done
