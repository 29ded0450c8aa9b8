#!/usr/bin/env bash
# The device command for scripts/gpu_recipe.py (docs/results.md, "The full recipe on a GPU"): install the
# carried wheels, unpack, run configs/scifact.yaml through stages 1 -> 2 -> 3 with scripts/recipe_seeds.sh
# (seeds SEEDS, default "42 1 2"; representations REPRESENTATIONS, default [cls]) for at most BUDGET_S
# seconds (default 500), then collect what finished into $OUT. Stages are cached, so a second call on
# the same warm machine resumes where the first stopped.
#   device tool: run(carry=[".gpu-recipe"], timeout_s=600, command="bash scripts/gpu_recipe.sh")
# Tiny check on the CPU (no $OUT needed): GPU_RECIPE_TINY=1 SEEDS=42 PYTHON=.venv/bin/python bash scripts/gpu_recipe.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu-recipe}
mkdir -p "$out" /tmp/gpu-recipe-bin
python=${PYTHON:-python3}
if [ -d .gpu-recipe/wheels ] && [ "${GPU_RECIPE_TINY:-0}" != 1 ]; then  # py3.12 wheels: the GPU machine only
  "$python" -m pip install -q --no-index --no-deps --target /tmp/gpu-recipe-site .gpu-recipe/wheels/*.whl \
    && export PYTHONPATH=/tmp/gpu-recipe-site:$PWD/src
fi
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$out/device.txt" 2>/dev/null
"$python" scripts/gpu_recipe.py unpack || exit 1
printf '#!/bin/sh\nexec %s -m dupmae.cli "$@"\n' "$python" > /tmp/gpu-recipe-bin/dupmae
chmod +x /tmp/gpu-recipe-bin/dupmae
sets="model=$PWD/.gpu-recipe/minilm representations=${REPRESENTATIONS:-[cls]}"
if [ "${GPU_RECIPE_TINY:-0}" = 1 ]; then  # a few steps of everything: the plumbing, not the numbers
  sets="$sets pretrain.max_steps=2 finetune.max_steps=2 teacher.num_train_epochs=0.02 rerank.top_k=5 distill.depth=3"
  sets="$sets round2.depth=10 top_k=100 prepare.max_length=64 zero_shot.passage_max_length=32"
  sets="$sets finetune.passage_max_length=32 teacher.max_length=48"
fi
start=$(date +%s)
PATH=/tmp/gpu-recipe-bin:$PATH DUPMAE_DATA=$PWD/.gpu-recipe/data CONFIG=configs/scifact.yaml RECIPE_SETS="$sets" \
  timeout "${BUDGET_S:-500}" bash scripts/recipe_seeds.sh runs/gpu-recipe ${SEEDS:-42 1 2} 2>&1 \
  | grep --line-buffered -v -E "it/s\]|s/it\]" | tee "$out/recipe.log" | tail -c 20000
echo "recipe: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/recipe.log"
"$python" scripts/gpu_recipe.py collect runs/gpu-recipe "$out"
