#!/usr/bin/env bash
# BM25 baseline on the SciFact test queries (docs/results.md, "BM25 baseline"): bm25s with English
# stopwords and Snowball stemming over title + text, top 1000, then pytrec_eval. Fails if nDCG@10
# strays from the recorded value. Data root: $DUPMAE_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
scifact="${DUPMAE_DATA:-../shared/data}/scifact"
if [ ! -f "$scifact/corpus.jsonl" ]; then
  echo "SciFact not found at $scifact (expected corpus.jsonl, queries.jsonl, qrels/test.tsv)." >&2
  exit 2
fi
out="${1:-runs/bm25-scifact}"
mkdir -p "$out"
.venv/bin/python -m dupmae.retrieval.bm25 --corpus "$scifact" --qrels "$scifact/qrels/test.tsv" \
  --top-k 1000 --threads 1 --output "$out/test.trec"
.venv/bin/dupmae evaluate --run "$out/test.trec" --qrels "$scifact/qrels/test.tsv" \
  --metrics ndcg@10,mrr@10,recall@100,recall@1000 --output "$out/test-metrics.json"
.venv/bin/python - "$out/test-metrics.json" <<'PY'
import json, sys
expected, tolerance = 0.6863, 0.0005
got = json.load(open(sys.argv[1]))["metrics"]["ndcg@10"]
print(f"nDCG@10 {got:.4f}, expected {expected} +/- {tolerance}: {'OK' if abs(got - expected) <= tolerance else 'MISMATCH'}")
sys.exit(0 if abs(got - expected) <= tolerance else 1)
PY
