"""`dupmae train-reranker`: a cross-encoder teacher, trained with sentence-transformers' `CrossEncoder`.

    dupmae train-reranker --model LOCAL --data BEIR_DIR --negatives negs.jsonl --output DIR \
        [--dev-fraction 0.2] [--negatives-per-query 3] [--num-train-epochs 1] [--max-length 256] \
        [--loss listwise|bce]

From any local encoder folder (e.g. all-MiniLM-L6-v2: its encoder plus a fresh one-logit head) or a
cross-encoder folder. Training rows: for every judged query of the split (minus the held-out dev
queries, as `dupmae finetune --dev-fraction` holds them out), (query, positive, 1) for each
positive and (query, negative, 0) for `--negatives-per-query` negatives drawn (seeded per query)
from the top `--negative-depth` mined ones. Two losses:

- `listwise` (default): a softmax cross-entropy over each group (query, positive, negative_1..n)
  on the raw logits, the objective the distillation term later compares softmaxes of. One row per
  (query, positive); a group learns the *ranking* the teacher is for.
- `bce`: pointwise `BinaryCrossEntropyLoss` over (query, passage, label) rows with `pos_weight` =
  negatives per query, so both classes weigh the same. Measured on SciFact dev (docs/results.md,
  "The cross-encoder teacher"), this trains a fresh head far more slowly.

Trained by `CrossEncoderTrainer` (an HF `Trainer`: checkpoints, `--resume`, bf16, `--config FILE`
as for `dupmae finetune`).
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dupmae.config import parse_with_config_file
from dupmae.data.beir import dev_split, load_beir
from dupmae.data.finetune import load_negatives
from dupmae.modeling.cross_encoder import load_cross_encoder
from dupmae.modeling.retriever import document_text
from dupmae.training.distributed import accelerator_available
from dupmae.training.trainer import CheckpointMarkerCallback, JsonlLogCallback, checkpoint_to_resume, train_or_finish

logger = logging.getLogger(__name__)

TRAINING_DEFAULTS = {
    "learning_rate": 2e-4,  # a fresh one-logit head on a bi-encoder: 5e-5 barely moves in an epoch (docs/results.md)
    "num_train_epochs": 2,
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 16,  # rows: (query, passage) pairs for bce, whole groups for listwise
    "logging_steps": 10,
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "report_to": "none",
}


@dataclass
class RerankerArguments:
    model: str | None = field(default=None, metadata={"help": "Local encoder or cross-encoder folder to start from."})
    data: str | None = field(default=None, metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)."})
    split: str = field(default="train", metadata={"help": "qrels split to train on."})
    negatives: str | None = field(default=None, metadata={"help": "negs.jsonl from `dupmae mine` (best first)."})
    negative_depth: int = field(default=30, metadata={"help": "Draw negatives from the top-N mined documents."})
    negatives_per_query: int = field(default=3, metadata={"help": "Negative rows per query (and BCE pos_weight)."})
    max_length: int = field(default=256, metadata={"help": "Tokens per (query, passage) pair."})
    loss: str = field(default="listwise", metadata={
        "help": "listwise: softmax cross-entropy over (positive, negatives) groups; bce: pointwise binary labels."})
    dev_fraction: float = field(default=0.0, metadata={
        "help": "Leave out this share of the split's queries (dev_split, seed 13), as `dupmae finetune` does."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in --output."})

    def __post_init__(self) -> None:
        if not self.model or not self.data or not self.negatives:
            raise ValueError("--model, --data and --negatives are required")
        for name in ("model", "data", "negatives"):
            if not Path(getattr(self, name)).exists():
                raise FileNotFoundError(f"--{name}: {getattr(self, name)} does not exist")
        if self.negative_depth < 1 or self.negatives_per_query < 1 or self.max_length < 8:
            raise ValueError("--negative-depth and --negatives-per-query must be >= 1, --max-length >= 8")
        if not 0 <= self.dev_fraction < 1:
            raise ValueError(f"--dev-fraction must be in [0, 1), got {self.dev_fraction}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")


LOSSES = ("listwise", "bce")


def _judged_groups(queries, corpus, qrels, negatives, depth: int, per_query: int, seed: int):
    """(query text, [positive texts], [negative texts]) for every judged query with a positive and a text;
    negatives drawn (seeded per query) from the top `depth` mined ones, positives excluded."""
    for query_id, judged in qrels.items():
        positives = [d for d, relevance in judged.items() if relevance > 0]
        if not positives or query_id not in queries:
            continue
        pool = [d for d in negatives.get(query_id, [])[:depth] if d in corpus and d not in positives]
        chosen = random.Random(f"{seed}:{query_id}").sample(pool, min(per_query, len(pool)))
        yield (queries[query_id], [document_text(corpus[d]) for d in positives if d in corpus],
               [document_text(corpus[d]) for d in chosen])


def training_rows(queries: dict[str, str], corpus: dict[str, dict], qrels: dict[str, dict[str, int]],
                  negatives: dict[str, list[str]], depth: int, per_query: int, seed: int) -> dict[str, list]:
    """Pointwise rows (`bce`): columns `query`, `passage`, `label` (1.0 / 0.0), queries in qrels order."""
    rows = {"query": [], "passage": [], "label": []}
    for query, positives, chosen in _judged_groups(queries, corpus, qrels, negatives, depth, per_query, seed):
        for passage, label in [(p, 1.0) for p in positives] + [(n, 0.0) for n in chosen]:
            rows["query"].append(query)
            rows["passage"].append(passage)
            rows["label"].append(label)
    return rows


def training_groups(queries: dict[str, str], corpus: dict[str, dict], qrels: dict[str, dict[str, int]],
                    negatives: dict[str, list[str]], depth: int, per_query: int, seed: int) -> dict[str, list]:
    """Listwise rows: columns `query`, `positive`, `negative_1` .. `negative_n` (n = `per_query`), one row
    per (query, positive). Queries with fewer than n mined negatives are left out (a column cannot be
    ragged); how many is logged."""
    columns = ["query", "positive"] + [f"negative_{i + 1}" for i in range(per_query)]
    rows = {name: [] for name in columns}
    short = 0
    for query, positives, chosen in _judged_groups(queries, corpus, qrels, negatives, depth, per_query, seed):
        if len(chosen) < per_query:
            short += 1
            continue
        for positive in positives:
            for name, value in zip(columns, [query, positive, *chosen]):
                rows[name].append(value)
    if short:
        logger.warning("cross-encoder: %d queries left out with fewer than %d mined negatives", short, per_query)
    return rows


def listwise_loss(model):
    """Softmax cross-entropy over (positive, hard negatives) on the raw logits: sentence-transformers'
    `MultipleNegativesRankingLoss` with no activation, scale 1 and no in-batch negatives (other queries'
    passages are easy negatives that would double the forward passes for little signal)."""
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    class HardNegativesOnly(MultipleNegativesRankingLoss):
        def get_in_batch_negatives(self, anchors, candidates):
            return iter(())

    return HardNegativesOnly(model, num_negatives=None, scale=1.0, activation_fn=None)


def parse_arguments(argv: list[str]):
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    return parse_with_config_file((RerankerArguments, CrossEncoderTrainingArguments), argv,
                                  {**TRAINING_DEFAULTS, "use_cpu": not accelerator_available()},
                                  "dupmae train-reranker")


def train_reranker(args: RerankerArguments, training):
    """Train and save the cross-encoder to `training.output_dir`; returns the `CrossEncoderTrainer`."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

    output = Path(training.output_dir)
    checkpoint = checkpoint_to_resume(output, args.resume)
    set_seed(training.seed)
    collection = load_beir(args.data, args.split)
    qrels = dev_split(collection.qrels, args.dev_fraction)[0] if args.dev_fraction else collection.qrels
    build = training_groups if args.loss == "listwise" else training_rows
    rows = build(collection.queries, collection.corpus, qrels, load_negatives(args.negatives),
                 args.negative_depth, args.negatives_per_query, training.seed)
    if not rows["query"]:
        raise ValueError(f"no training rows: no judged query of {args.split} with a positive, a text and "
                         f"{args.negatives_per_query} mined negatives")
    model = load_cross_encoder(args.model, args.max_length, "cpu" if training.use_cpu else None)
    if args.loss == "listwise":
        loss = listwise_loss(model)
    else:
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(args.negatives_per_query)))
    trainer = CrossEncoderTrainer(model=model, args=training, train_dataset=Dataset.from_dict(rows), loss=loss,
                                  callbacks=[JsonlLogCallback(), CheckpointMarkerCallback()])
    logger.info("cross-encoder (%s loss): %d rows from %d queries", args.loss, len(rows["query"]),
                len(set(rows["query"])))
    if training.should_save:
        output.mkdir(parents=True, exist_ok=True)
        resolved = {"reranker": vars(args), "training": json.loads(training.to_json_string())}
        (output / "dupmae_reranker_config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    train_or_finish(trainer, checkpoint)
    if training.should_save:
        model.save_pretrained(str(output))
    return trainer


def main(argv: list[str]) -> int:
    try:
        output = train_reranker(*parse_arguments(argv)).args.output_dir
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"dupmae train-reranker: error: {error}", file=sys.stderr)
        return 2
    print(output)
    return 0
