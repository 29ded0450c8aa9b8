"""`dupmae score-pairs`: the teacher's scores of the fine-tuning groups' pairs, cached for distillation.

    dupmae score-pairs --cross-encoder DIR --data BEIR_DIR --negatives negs.jsonl --depth 30 \
        --output teacher_scores.jsonl [--split train] [--dev-fraction 0.2]

For every judged query of the split with a positive (held-out dev queries left out with
`--dev-fraction`, as `dupmae finetune` does): the cross-encoder's logit of every positive and of the
top `--depth` mined negatives. One line a query, `{"query_id", "scores": {doc_id: logit}}`, read by
`dupmae finetune --teacher-scores` (which then draws negatives from the scored ones only).
Resumable: an interrupted run continues from `OUTPUT.partial`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from dupmae.config import positive_int
from dupmae.data.beir import dev_split, load_beir
from dupmae.data.finetune import load_negatives
from dupmae.modeling.cross_encoder import Group, add_scoring_arguments, load_cross_encoder, score_groups
from dupmae.modeling.retriever import document_text

logger = logging.getLogger(__name__)


def training_groups(queries: Mapping[str, str], corpus: Mapping[str, dict], qrels: Mapping[str, Mapping[str, int]],
                    negatives: Mapping[str, list[str]], depth: int) -> Iterator[Group]:
    """(query id, text, [(doc id, text)]) of each judged query with a positive and a text: its positives
    (qrels order), then its first `depth` negatives that are in the corpus and not positives."""
    for query_id, judged in qrels.items():
        positives = [d for d, relevance in judged.items() if relevance > 0]
        if not positives or query_id not in queries:
            continue
        mined = [d for d in negatives.get(query_id, []) if d in corpus and d not in positives]
        docs = positives + list(dict.fromkeys(mined))[:depth]
        yield query_id, queries[query_id], [(d, document_text(corpus[d])) for d in docs]


def score_training_pairs(cross_encoder: str | Path, data: str | Path, negatives: str | Path, output: str | Path,
                         depth: int = 30, split: str = "train", dev_fraction: float = 0.0, max_length: int | None = None,
                         batch_size: int = 32, bf16="auto", reuse_output: bool = False) -> dict[str, dict[str, float]]:
    """Score the groups of `training_groups` with the cross-encoder; write (resumably) and return them
    (`reuse_output`: see `score_groups`)."""
    if depth < 1:
        raise ValueError(f"--depth must be >= 1, got {depth}")
    collection = load_beir(str(data), split)
    qrels = dev_split(collection.qrels, dev_fraction)[0] if dev_fraction else collection.qrels
    groups = training_groups(collection.queries, collection.corpus, qrels, load_negatives(negatives), depth)
    model = load_cross_encoder(cross_encoder, max_length)
    return score_groups(model, groups, output, batch_size, bf16, reuse_output=reuse_output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dupmae score-pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cross-encoder", required=True, help="local cross-encoder folder (e.g. from train-reranker)")
    parser.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    parser.add_argument("--split", default="train", help="qrels split (default: train)")
    parser.add_argument("--negatives", required=True, help="negs.jsonl from `dupmae mine`")
    parser.add_argument("--depth", type=positive_int, default=30,
                        help="score the top N negatives of each query (default: 30)")
    parser.add_argument("--dev-fraction", type=float, default=0.0,
                        help="leave out the held-out dev queries, as `dupmae finetune --dev-fraction` (default: 0)")
    add_scoring_arguments(parser)
    parser.add_argument("--output", required=True, help="teacher_scores.jsonl to write")
    return parser


def main(argv: list[str]) -> int:
    arguments = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        scores = score_training_pairs(arguments.cross_encoder, arguments.data, arguments.negatives, arguments.output,
                                      arguments.depth, arguments.split, arguments.dev_fraction, arguments.max_length,
                                      arguments.batch_size, arguments.bf16)
    except (OSError, ValueError) as error:
        print(f"dupmae score-pairs: error: {error}", file=sys.stderr)
        return 2
    pairs = sum(len(values) for values in scores.values())
    print(json.dumps({"queries": len(scores), "pairs": pairs, "seconds": round(time.monotonic() - started, 1),
                      "output": arguments.output}))
    return 0
