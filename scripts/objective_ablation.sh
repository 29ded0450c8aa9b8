#!/usr/bin/env bash
# The objective ablation of docs/results.md on SciFact (configs/scifact-ablation.yaml), one
# `dupmae run` per (objective, seed) into one output folder, so shared stages are built once.
#
#   bash scripts/objective_ablation.sh [OUTPUT]          # default runs/ablation
#   PHASES="main objectives seeds" bash scripts/objective_ablation.sh
#
# Phases, most informative first (each run's results.json is kept as results-<objective>-s<seed>.json):
#   main        seed 42, objective dupmae, representations cls + dupmae (also: BM25, zero-shot, and
#               the fine-tuning without continued pre-training = the "none" row)
#   objectives  seed 42, objectives mlm, retromae, bow_only, representation cls
#   seeds       seeds 1 and 2, objective dupmae vs none, representation cls
#   objectives-dupmae-rep   seed 42, objectives mlm, retromae, bow_only, representation dupmae
#   sparse      seed 42, objective dupmae, representation sparse (the representation ablation's
#               sparse-only row; cls and dupmae come from main)
#   seeds-dupmae-rep        seeds 1 and 2, objective dupmae vs none, representation dupmae
#   lr          seed 42, objective dupmae, representation cls, continued pre-training learning
#               rates 1e-5 and 3e-5 (main used 1e-4; the choice is made on dev)
#   epochs      seed 42, objective dupmae vs none, representation cls, 4 fine-tuning epochs instead
#               of 1 (the full config's recipe): does longer fine-tuning undo the drift?
#   freeze      seed 42, objective dupmae, representation cls, encoder frozen for the first 100 of
#               the 250 steps (`--freeze-encoder-steps`: the head and decoder learn first)
#   seeds-lr, seeds-freeze  seeds 1 and 2 of the lr 1e-5 / freeze rows
#   seeds-epochs, seeds-epochs-lr  seeds 1 and 2 of the epochs / epochs-lr rows
#   epochs-lr, epochs-freeze  the lr 1e-5 / freeze rows with 4 fine-tuning epochs
#   epochs-lr-dupmae-rep, seeds-epochs-lr-dupmae-rep  the epochs-lr row (seed 42; seeds 1 and 2)
#               with representation dupmae (dense + sparse)
#   hybrid      the epochs-lr rows of both representations, seeds 42, 1 and 2, rerun after the hybrid
#               systems (`+ BM25`, docs/pipeline.md) were added: every stage is cached but the fusions
#   hybrid-rrf  the same with reciprocal-rank fusion instead of min-max scores (the dev choice of
#               hybrid.method)
# Then: python scripts/ablation_table.py OUTPUT/results-*.json
set -euo pipefail
output=${1:-runs/ablation}
phases=${PHASES:-main objectives seeds objectives-dupmae-rep sparse seeds-dupmae-rep}
config=configs/scifact-ablation.yaml
dupmae=${DUPMAE:-dupmae}

run() {  # run OBJECTIVE SEED REPRESENTATIONS [NAME_SUFFIX KEY=VALUE...]: extra --set settings
    local objective=$1 seed=$2 representations=$3 suffix=${4:-}
    local name="$objective-s$seed-$(tr -d '[]' <<<"$representations" | tr ',' '+')${suffix:+-$suffix}"
    local extra=()
    for setting in "${@:5}"; do extra+=(--set "$setting"); done
    local kept="$output/results-$name.json"
    if [[ -f $kept ]]; then echo "== $kept exists, skipped"; return; fi
    echo "== objective=$objective seed=$seed representations=$representations ${extra[*]} ($(date +%T))"
    $dupmae run "$config" --output "$output" --set pretrain.objective="$objective" --set seed="$seed" \
        --set representations="$representations" "${extra[@]}"
    cp "$output/results.json" "$kept"
    cp "$output/report.md" "${kept%.json}.md"
}

for phase in $phases; do
    case $phase in
        main) run dupmae 42 "[cls,dupmae]" ;;
        objectives) for objective in mlm retromae bow_only; do run "$objective" 42 "[cls]"; done ;;
        seeds) for seed in 1 2; do run dupmae "$seed" "[cls]"; done ;;
        objectives-dupmae-rep) for objective in mlm retromae bow_only; do run "$objective" 42 "[dupmae]"; done ;;
        sparse) run dupmae 42 "[sparse]" ;;
        seeds-dupmae-rep) for seed in 1 2; do run dupmae "$seed" "[dupmae]"; done ;;
        lr) for rate in 1e-5 3e-5; do run dupmae 42 "[cls]" "lr$rate" pretrain.learning_rate="$rate"; done ;;
        epochs) run dupmae 42 "[cls]" ep4 finetune.num_train_epochs=4 ;;
        freeze) run dupmae 42 "[cls]" fz100 pretrain.freeze_encoder_steps=100 ;;
        seeds-epochs) for seed in 1 2; do run dupmae "$seed" "[cls]" ep4 finetune.num_train_epochs=4; done ;;
        seeds-epochs-lr) for seed in 1 2; do run dupmae "$seed" "[cls]" lr1e-5-ep4 pretrain.learning_rate=1e-5 finetune.num_train_epochs=4; done ;;
        epochs-lr) run dupmae 42 "[cls]" lr1e-5-ep4 pretrain.learning_rate=1e-5 finetune.num_train_epochs=4 ;;
        epochs-lr-dupmae-rep) run dupmae 42 "[dupmae]" lr1e-5-ep4 pretrain.learning_rate=1e-5 finetune.num_train_epochs=4 ;;
        seeds-epochs-lr-dupmae-rep) for seed in 1 2; do run dupmae "$seed" "[dupmae]" lr1e-5-ep4 pretrain.learning_rate=1e-5 finetune.num_train_epochs=4; done ;;
        hybrid) for seed in 42 1 2; do for rep in cls dupmae; do
                    run dupmae "$seed" "[$rep]" lr1e-5-ep4-hybrid pretrain.learning_rate=1e-5 finetune.num_train_epochs=4
                done; done ;;
        hybrid-rrf) for seed in 42 1 2; do for rep in cls dupmae; do
                    run dupmae "$seed" "[$rep]" lr1e-5-ep4-hybrid-rrf pretrain.learning_rate=1e-5 finetune.num_train_epochs=4 \
                        hybrid.method=rrf
                done; done ;;
        epochs-freeze) run dupmae 42 "[cls]" fz100-ep4 pretrain.freeze_encoder_steps=100 finetune.num_train_epochs=4 ;;
        seeds-lr) for seed in 1 2; do run dupmae "$seed" "[cls]" lr1e-5 pretrain.learning_rate=1e-5; done ;;
        seeds-freeze) for seed in 1 2; do run dupmae "$seed" "[cls]" fz100 pretrain.freeze_encoder_steps=100; done ;;
        *) echo "unknown phase $phase" >&2; exit 2 ;;
    esac
done
