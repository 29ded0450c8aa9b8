"""Is a cross-encoder teacher any good? Re-rank BM25's top k of the SciFact *dev* queries with it.

The dev queries are the ones `dupmae train-reranker --dev-fraction 0.2` held out (`dev_split`,
seed 13), so the teacher never saw them. Prints and writes (JSON) dev nDCG@10 / MRR@10 of BM25 and
of BM25 + rerank, and the pairwise accuracy: the share of (relevant, non-relevant) pairs inside
BM25's top k that the teacher orders correctly (0.5 = chance).

    dupmae train-reranker --model MODEL --data ../shared/data/scifact --negatives negs.jsonl \\
        --dev-fraction 0.2 --output runs/teacher/T
    python scripts/teacher_dev.py --teacher runs/teacher/T --data ../shared/data/scifact \\
        --top-k 20 --output runs/teacher/T/dev.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dupmae.data.beir import dev_split, load_beir
from dupmae.evaluation.metrics import evaluate
from dupmae.modeling.cross_encoder import load_cross_encoder
from dupmae.retrieval.bm25 import BM25Index
from dupmae.retrieval.rerank import rerank_run

METRICS = ["ndcg@10", "mrr@10"]


def pairwise_accuracy(logits: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    """Share of (relevant, non-relevant) document pairs of the same query with the relevant one scored higher."""
    right = total = 0
    for query_id, scores in logits.items():
        judged = qrels.get(query_id, {})
        relevant = [s for d, s in scores.items() if judged.get(d, 0) > 0]
        other = [s for d, s in scores.items() if judged.get(d, 0) <= 0]
        for r in relevant:
            for o in other:
                right += r > o
                total += 1
    return right / total if total else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="cross-encoder folder")
    parser.add_argument("--data", required=True, help="BEIR folder with qrels/train.tsv")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--output", required=True, help="JSON to write")
    args = parser.parse_args()

    collection = load_beir(args.data, "train")
    dev = dev_split(collection.qrels, 0.2)[1]
    queries = {q: collection.queries[q] for q in dev if q in collection.queries}
    bm25 = BM25Index.build(collection.corpus, show_progress=False).search(queries, args.top_k)
    model = load_cross_encoder(args.teacher, args.max_length)
    scores_file = Path(args.output).with_suffix(".scores.jsonl")
    started = time.perf_counter()
    reranked = rerank_run(model, bm25, queries, collection.corpus, args.top_k, scores_file, reuse_output=True)
    seconds = time.perf_counter() - started
    logits = {}
    for line in scores_file.read_text().splitlines():
        record = json.loads(line)
        logits[record["query_id"]] = record["scores"]
    result = {
        "teacher": args.teacher, "top_k": args.top_k, "dev_queries": len(queries),
        "bm25": evaluate(bm25, dev, METRICS)["metrics"],
        "rerank": evaluate(reranked, dev, METRICS)["metrics"],
        "pairwise_accuracy": pairwise_accuracy(logits, dev),
        "rerank_seconds": round(seconds, 1),
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
