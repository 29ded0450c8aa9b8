#!/usr/bin/env bash
# The paper's fine-tuning stages 1 -> 2 -> 3 on SciFact, with and without DupMAE pre-training, over
# seeds (issue 16, docs/results.md "The whole recipe over three seeds"). The quick preset's settings;
# one output folder for every seed, so the stages no seed changes (data, BM25, the teacher, BM25 +
# rerank) run once; each seed's results.json / report.md are kept as results-sSEED.json /
# report-sSEED.md.
#
#   TEACHER=runs/teacher/T bash scripts/recipe_seeds.sh OUT SEED...
#   python scripts/aggregate_seeds.py OUT/results-s*.json                      # mean ± std per system
#   python scripts/seed_pooled_test.py OUT/results-s*.json --system ft-distill-cls --against ft-cls
#
# TEACHER: a cross-encoder folder from `dupmae train-reranker` (default: trained by the first seed's run,
# with the config's teacher settings, then given to the other seeds as `teacher.path`, so that every
# seed distils from the same teacher). The systems that do not depend on the seed run
# with the first seed only: zero-shot, and `rerank` (BM25's top RERANK_TOP_K, default 30, re-ordered by
# the teacher). DISTILL_DEPTH (default 7): round-2 negatives per query the teacher scores for round 3.
# TRANSFER=1 also evaluates the first seed's systems on the four transfer collections.
# RECIPE_SETS: more `dupmae run --set` overrides, space-separated, for every seed, e.g. the `dupmae`
# representation in the quick preset (cosine, so the sparse weight is scaled by the temperature):
#   RECIPE_SETS='representations=[dupmae] representation.dupmae.normalize_dense=true
#                representation.dupmae.sparse_weight=0.001' bash scripts/recipe_seeds.sh OUT 42 1 2
# CONFIG (default configs/scifact-quick.yaml): the pipeline config; RERANK_TOP_K and DISTILL_DEPTH
# default to the config's own values for any other config (scripts/gpu_recipe.sh runs configs/scifact.yaml).
# SEED_FREE (default zero-shot,rerank): the seed-independent systems the first seed adds ("" for none).
set -euo pipefail
out=${1:?usage: recipe_seeds.sh OUT SEED...}; shift
[ $# -gt 0 ] || { echo "recipe_seeds.sh: give at least one seed" >&2; exit 2; }
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
dupmae=${DUPMAE:-dupmae}
systems=bm25,finetune,dupmae,finetune-r2,dupmae-r2,finetune-distill,dupmae-distill
teacher=()
[ -n "${TEACHER:-}" ] && teacher=(--set "teacher.path=$(realpath "$TEACHER")")
more=()
read -ra recipe_sets <<< "${RECIPE_SETS:-}"
for setting in "${recipe_sets[@]}"; do more+=(--set "$setting"); done
seed_free=${SEED_FREE-zero-shot,rerank}
config=${CONFIG:-configs/scifact-quick.yaml}
depths=()
if [ "$config" = configs/scifact-quick.yaml ]; then  # the quick preset's recipe (docs/results.md)
  depths=(--set "rerank.top_k=${RERANK_TOP_K:-30}" --set "distill.depth=${DISTILL_DEPTH:-7}")
else
  [ -n "${RERANK_TOP_K:-}" ] && depths+=(--set "rerank.top_k=$RERANK_TOP_K")
  [ -n "${DISTILL_DEPTH:-}" ] && depths+=(--set "distill.depth=$DISTILL_DEPTH")
fi
first=1
for seed in "$@"; do
  extra=(--set 'transfer=[]')
  wanted=$systems
  if [ $first = 1 ]; then
    wanted=$systems${seed_free:+,$seed_free}
    [ "${TRANSFER:-0}" = 1 ] && extra=()
  fi
  echo "== seed $seed: $wanted ($(date +%T))"
  "$dupmae" run "$config" --output "$out" --set "seed=$seed" --set "systems=[$wanted]" \
      "${depths[@]}" "${teacher[@]}" "${more[@]}" "${extra[@]}"
  cp "$out/results.json" "$out/results-s$seed.json"
  cp "$out/report.md" "$out/report-s$seed.md"
  [ -f "$out/per_query.json" ] && cp "$out/per_query.json" "$out/per_query-s$seed.json"
  if [ ${#teacher[@]} = 0 ]; then  # the first seed trained the teacher: the later seeds reuse it
    trained=$("${PYTHON:-python3}" -c 'import json, sys
stages = json.load(open(sys.argv[1]))["timings"]["stages"]
print(next((item["folder"] for item in stages if item["stage"] == "teacher"), ""))' "$out/results.json")
    [ -n "$trained" ] && teacher=(--set "teacher.path=$(realpath "$out/stages/$trained/model")")
  fi
  first=0
done
