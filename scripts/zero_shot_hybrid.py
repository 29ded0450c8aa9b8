"""Zero-shot retrieval (no fine-tuning) of a model or a pre-training export: dense, sparse, and
dense + w · sparse over a grid of sparse weights, on the test qrels and a dev qrels file.

What continued pre-training did to a representation before any fine-tuning: the dense half is
the mean-pooled, L2-normalised last hidden state; the sparse half is DupMAE's vocabulary vector
(max-pooled `log1p_relu` of the MLM head's logits, top-k per document; a model without a head gets
the identity head). Scores are `dense + w / s · sparse`, where `s` is the median over queries of
their best sparse score, so that w = 1 puts the sparse part's top score at about the scale of a
cosine. Every weight reuses one encoding of the corpus.

    python scripts/zero_shot_hybrid.py --model runs/ablation/stages/pretrain-HASH/encoder \\
        --data ../shared/data/scifact --dev-qrels runs/ablation/stages/data-HASH/dev_qrels.tsv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dupmae.data.beir import load_beir, load_qrels, load_queries
from dupmae.evaluation.metrics import evaluate
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig, load_tokenizer
from dupmae.modeling.retriever import Retriever
from dupmae.retrieval.index import QueryBlock, block_scores

WEIGHTS = (0.0, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0)
METRICS = ["ndcg@10", "recall@100"]


def hybrid_table(retriever: Retriever, corpus: dict, queries: dict, qrels_by_split: dict, weights=WEIGHTS) -> dict:
    """`{split: {label: metrics}}` with labels "dense", "w=...", "sparse"; the corpus is encoded once."""
    doc_ids = sorted(corpus)
    documents = retriever.encode_corpus([corpus[d] for d in doc_ids], doc_ids)
    table = {}
    for split, qrels in qrels_by_split.items():
        query_ids = sorted(qrels)
        encoded = retriever.encode_queries([queries[q] for q in query_ids], query_ids)
        dense = block_scores(QueryBlock(query_ids, encoded.dense, None), documents)  # [Q, N]
        sparse = block_scores(QueryBlock(query_ids, None, encoded.sparse), documents)  # [Q, N]
        scale = float(np.median(sparse.max(axis=1))) or 1.0
        variants = {f"w={w}": dense + (w / scale) * sparse for w in weights} | {"sparse": sparse}
        table[split] = {"sparse_scale": scale}
        for label, scores in variants.items():
            top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
            run = {q: [(doc_ids[j], float(scores[i, j])) for j in top[i]] for i, q in enumerate(query_ids)}
            table[split][label] = evaluate(run, qrels, METRICS)["metrics"]
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or `dupmae export` / pre-training export")
    parser.add_argument("--data", required=True, help="BEIR folder")
    parser.add_argument("--dev-qrels", help="qrels of a dev split carved from train (e.g. the pipeline's dev_qrels.tsv)")
    parser.add_argument("--passage-max-length", type=int, default=128)
    parser.add_argument("--sparse-top-k", type=int, default=384)
    parser.add_argument("--bf16", nargs="?", const="true", default="auto", choices=["auto", "true", "false"],
                        help="bf16 autocast: auto (default) = where the device multiplies bf16 natively")
    parser.add_argument("--output", help="also write the table as JSON")
    args = parser.parse_args(argv)
    for path in (args.model, args.data, args.dev_qrels):
        if path and not Path(path).exists():
            raise SystemExit(f"{path} does not exist")
    torch.manual_seed(0)
    config = RepresentationConfig(representation="dupmae", dense_dim=0, dense_pooling="mean", normalize_dense=True,
                                  sparse_activation="log1p_relu", sparse_top_k=args.sparse_top_k,
                                  passage_max_length=args.passage_max_length, query_max_length=64)
    retriever = Retriever(DupMAEEncoder.from_pretrained(args.model, config), load_tokenizer(args.model),
                          batch_size=32, bf16=args.bf16, show_progress=False)
    data = Path(args.data)
    qrels = {"test": load_qrels(str(data / "qrels" / "test.tsv"))}
    if args.dev_qrels:
        qrels["dev"] = load_qrels(args.dev_qrels)
    table = hybrid_table(retriever, load_beir(str(data), "test").corpus, load_queries(str(data / "queries.jsonl")), qrels)
    print("| split | " + " | ".join(label for label in table["test"] if label != "sparse_scale") + " |")
    print("|" + " --- |" * len(table["test"]))
    for split, rows in table.items():
        cells = [f"{rows[label]['ndcg@10']:.4f} / {rows[label]['recall@100']:.3f}" for label in rows if label != "sparse_scale"]
        print(f"| {split} nDCG@10 / R@100 | " + " | ".join(cells) + " |")
    if args.output:
        Path(args.output).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
