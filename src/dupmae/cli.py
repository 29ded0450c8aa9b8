"""`dupmae <verb> ...`: one entry point, one small driver module per verb.

Logging is configured here (never at import time). Each verb's module owns its
own argument parser and exposes `main(argv) -> int`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

VERBS = {
    "prepare": ("dupmae.data.prepare", "tokenize a corpus into a memory-mapped pre-training dataset"),
    "pretrain": ("dupmae.training.pretrain", "DupMAE / RetroMAE / BoW-only / MLM pre-training"),
    "export": ("dupmae.training.export", "export the encoder + MLM head of a checkpoint as a Hugging Face folder"),
    "export-st": ("dupmae.retrieval.export_st", "write a retriever as sentence-transformers folders (dense, sparse)"),
    "finetune": ("dupmae.training.finetune", "contrastive fine-tuning into a retriever (dupmae / cls / sparse)"),
    "encode": ("dupmae.retrieval.encode", "encode a corpus into a sharded, resumable dupmae index"),
    "search": ("dupmae.retrieval.search", "exact DupMAE search of an index, written as a TREC run"),
    "index": ("dupmae.retrieval.ingest", "load an encoded index into a search engine (Milvus: embedded or a server)"),
    "plot": ("dupmae.evaluation.plots", "plot the loss terms and accuracies of a pre-training run"),
    "mine": ("dupmae.retrieval.mine", "mine hard negatives for fine-tuning with BM25 (or a retriever model)"),
    "train-reranker": ("dupmae.training.reranker", "train a cross-encoder teacher (sentence-transformers) on queries + hard negatives"),
    "rerank": ("dupmae.retrieval.rerank", "re-score the top k of a TREC run with a cross-encoder"),
    "score-pairs": ("dupmae.training.score_pairs", "cache a cross-encoder's scores of the fine-tuning groups (distillation)"),
    "fuse": ("dupmae.retrieval.fusion", "fuse two TREC runs (e.g. a retriever's and BM25's) into a hybrid run"),
    "evaluate": ("dupmae.evaluation.evaluate", "score a TREC run against qrels (nDCG, MRR, recall, MAP, P)"),
    "interpolate": ("dupmae.training.interpolate", "move a fine-tuned retriever's weights toward its starting model (WiSE-FT)"),
    "beir": ("dupmae.pipeline.beir", "zero-shot evaluation of retrievers, BM25 and hybrids on many BEIR collections"),
    "run": ("dupmae.pipeline.run", "the whole domain-adaptation pipeline on a BEIR collection, with a report"),
}


def _usage() -> str:
    lines = ["usage: dupmae <verb> [options]   (dupmae <verb> --help for details)", "", "verbs:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb in {"-V", "--version"}:
        from dupmae import __version__

        print(__version__)
        return 0
    if verb not in VERBS:
        print(f"dupmae: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module = importlib.import_module(VERBS[verb][0])
    try:
        return int(module.main(rest) or 0)
    except SystemExit as exit_request:  # --help, or a usage error argparse has already printed
        return int(exit_request.code or 0)


if __name__ == "__main__":
    sys.exit(main())
