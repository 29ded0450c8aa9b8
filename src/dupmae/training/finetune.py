"""`dupmae finetune`: contrastive fine-tuning of a (DupMAE pre-trained) encoder into a retriever.

Settings: `FinetuneArguments` (data, negatives, group size, temperature, the optional teacher scores
of stage 3 and the weight and temperature of their KL term), `RepresentationConfig`
(DUPMAE.md §2: dupmae / cls / sparse and their options — saved with the model) and the usual
`TrainingArguments`; flags or a YAML/JSON `--config` file (flags win), as for `dupmae pretrain`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from dupmae.config import parse_with_config_file
from dupmae.data.finetune import GroupCollator, QueryDataset, load_negatives, load_teacher_scores
from dupmae.modeling.head_init import MISSING_HEAD_INITS
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig, load_tokenizer
from dupmae.platform import Accelerations, prepare
from dupmae.platform.precision import training_device
from dupmae.training.contrastive import contrastive_loss, own_group_scores
from dupmae.training.distill import distillation_loss
from dupmae.training.distributed import accelerator_available, all_reduce_sum, check_world_size, shutdown, world_size
from dupmae.training.interpolate import interpolate
from dupmae.training.trainer import (CheckpointMarkerCallback, CollatorEpochCallback, JsonlLogCallback,
                                    checkpoint_to_resume, train_or_finish)

logger = logging.getLogger(__name__)

TRAINING_DEFAULTS = {
    "learning_rate": 2e-5,  # released recipe
    "num_train_epochs": 4,
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 8,
    "logging_steps": 10,
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "report_to": "tensorboard",
    "remove_unused_columns": False,
    "dataloader_drop_last": True,  # equal query counts per process keep the DDP gradient exact
    "average_tokens_across_devices": False,
    "ddp_find_unused_parameters": False,
}


@dataclass
class FinetuneArguments:
    model: str | None = field(default=None, metadata={
        "help": "Starting model: a pre-training export, any local masked-LM/encoder folder, or a retriever folder."})
    data: str | None = field(default=None, metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)."})
    split: str = field(default="train", metadata={"help": "qrels split to train on."})
    negatives: str | None = field(default=None, metadata={
        "help": "negs.jsonl from `dupmae mine` (hard negatives, best first); without it negatives are random."})
    negative_depth: int = field(default=200, metadata={"help": "Sample negatives from the top-N mined documents."})
    group_size: int = field(default=8, metadata={"help": "Passages per query: 1 positive + group_size-1 negatives."})
    temperature: float = field(default=1.0, metadata={"help": "Scores are divided by this (paper: 1)."})
    negatives_across_devices: bool = field(default=True, metadata={
        "help": "Share every process's passages as in-batch negatives (gathered with gradient)."})
    dev_fraction: float = field(default=0.0, metadata={
        "help": "Hold out this share of the split's queries (dev_split, seed 13) for choosing settings; "
                "their qrels are written to OUTPUT/dev_qrels.tsv."})
    missing_head_init: str = field(default="identity", metadata={
        "help": "How to start an MLM head the starting model lacks (e.g. all-MiniLM-L6-v2): identity "
                "(vocabulary logits = similarity to the word embeddings, lexical from the start) or random.",
        "choices": list(MISSING_HEAD_INITS)})
    teacher_scores: str | None = field(default=None, metadata={
        "help": "teacher_scores.jsonl from `dupmae score-pairs` (stage 3): adds distill_weight x KL(teacher || "
                "student) over each query's own group; negatives are then drawn from the scored ones only."})
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the KL term (with --teacher-scores)."})
    distill_temperature: float = field(default=1.0, metadata={
        "help": "The teacher's softmax in the KL term divides its logits by this (with --teacher-scores); the "
                "student's divides its scores by --temperature, as its contrastive loss does."})
    interpolate_with_start: float = field(default=1.0, metadata={
        "help": "After training, weights = a x fine-tuned + (1 - a) x the --model start (WiSE-FT, `dupmae "
                "interpolate`); 1 = off. Keeps more of the start's zero-shot quality on other collections "
                "(docs/results.md, Transfer)."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in --output."})

    def __post_init__(self) -> None:
        if not self.model or not self.data:
            raise ValueError("--model and --data are required")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise ValueError("--distill-weight must be >= 0 and --distill-temperature > 0")
        for name in ("model", "data", "negatives", "teacher_scores"):
            value = getattr(self, name)
            if value and not Path(value).exists():
                raise FileNotFoundError(f"--{name}: {value} does not exist")
        if not 0.0 <= self.interpolate_with_start <= 1.0:
            raise ValueError(f"--interpolate-with-start must be in [0, 1], got {self.interpolate_with_start}")
        if self.negative_depth < 1:
            raise ValueError(f"--negative-depth must be >= 1, got {self.negative_depth}")
        if self.group_size < 1 or self.temperature <= 0 or not 0 <= self.dev_fraction < 1:
            raise ValueError("group_size must be >= 1, temperature > 0 and 0 <= dev_fraction < 1")


class ContrastiveTrainer(Trainer):
    """Contrastive loss, plus `distill_weight` x the KL term when batches carry `teacher_scores`."""

    def __init__(self, *args, group_size: int, temperature: float, across_devices: bool, distill_weight: float = 0.0,
                 distill_temperature: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group_size, self.temperature, self.across_devices = group_size, temperature, across_devices
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature
        self._accuracy_total, self._batches = 0.0, 0
        self._terms = {"loss_contrastive": 0.0, "loss_distill": 0.0}  # summed on the device, logged as means

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        top_k = None
        config = self.accelerator.unwrap_model(model).representation
        if config.uses_sparse and config.sparse_top_k_in_training:
            top_k = config.sparse_top_k
        queries = model(inputs["query_input_ids"], inputs["query_attention_mask"], inputs["query_special_tokens_mask"])
        passages = model(inputs["passage_input_ids"], inputs["passage_attention_mask"],
                         inputs["passage_special_tokens_mask"], top_k=top_k)
        loss, accuracy = contrastive_loss(queries, passages, self.group_size, self.temperature, self.across_devices)
        distill = None
        if "teacher_scores" in inputs:  # stage 3: the query's own group only (local passages, never gathered)
            student = own_group_scores(queries, passages, self.group_size)  # [B, G], positive first
            # the student's softmax is its contrastive one (scores / temperature); the teacher's is / distill_temperature
            distill = distillation_loss(student, inputs["teacher_scores"], self.distill_temperature,
                                        student_temperature=self.temperature)
        if model.training:
            self._accuracy_total = self._accuracy_total + accuracy.detach()  # summed on the device: no sync per step
            self._batches += 1
            if distill is not None:
                self._terms["loss_contrastive"] = self._terms["loss_contrastive"] + loss.detach()
                self._terms["loss_distill"] = self._terms["loss_distill"] + distill.detach()
        if distill is not None:
            loss = loss + self.distill_weight * distill
        return (loss, queries) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._batches:
            mean = all_reduce_sum(torch.as_tensor(self._accuracy_total / self._batches, dtype=torch.float32,
                                                  device=self.args.device))
            logs["train_accuracy"] = round(float(mean) / world_size(), 4)
            for name, total in self._terms.items():
                if torch.is_tensor(total):  # only with teacher scores
                    term = all_reduce_sum(total.float() / self._batches)
                    logs[name] = round(float(term) / world_size(), 6)
            self._accuracy_total, self._batches = 0.0, 0
            self._terms = dict.fromkeys(self._terms, 0.0)
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir or self.args.output_dir,
                                                                      self.processing_class)


def parse_arguments(argv: list[str]):
    """Flags > config file > our defaults > library defaults (as for `dupmae pretrain`)."""
    return parse_with_config_file((FinetuneArguments, RepresentationConfig, Accelerations, TrainingArguments), argv,
                                  {**TRAINING_DEFAULTS, "use_cpu": not accelerator_available()}, "dupmae finetune")


def finetune(args: FinetuneArguments, representation: RepresentationConfig, accelerations: Accelerations,
             training: TrainingArguments, callbacks=()):
    from dupmae.data.beir import dev_split, load_beir

    output = Path(training.output_dir)
    for name in ("vocab_loss", "bow_pool"):  # pre-training's vocabulary kernels: refused, not silently ignored
        if getattr(accelerations, name) not in ("auto", "chunked"):
            raise ValueError(f"{name}={getattr(accelerations, name)} is a pre-training setting: fine-tuning has "
                             "no vocabulary cross-entropy or BoW loss")
    checkpoint = checkpoint_to_resume(output, args.resume)

    set_seed(training.seed)
    collection = load_beir(args.data, args.split)
    qrels = collection.qrels
    if args.dev_fraction:
        qrels, dev_qrels = dev_split(qrels, args.dev_fraction)
        if training.should_save:
            output.mkdir(parents=True, exist_ok=True)
            with open(output / "dev_qrels.tsv", "w") as handle:
                handle.write("query-id\tcorpus-id\tscore\n")
                handle.writelines(f"{q}\t{d}\t{r}\n" for q, docs in sorted(dev_qrels.items()) for d, r in sorted(docs.items()))
    # Queries with an empty text are not in collection.queries (`searchable_queries`): nothing to learn from.
    query_ids = sorted(q for q, docs in qrels.items() if q in collection.queries and any(r > 0 for r in docs.values()))
    negatives = load_negatives(args.negatives) if args.negatives else {}
    negatives = {q: docs[: args.negative_depth] for q, docs in negatives.items()}
    teacher_scores = load_teacher_scores(args.teacher_scores) if args.teacher_scores else None

    encoder = DupMAEEncoder.from_pretrained(args.model, representation, args.missing_head_init)
    prepare(encoder, training_device(training.use_cpu), accelerations, training=True, tf32=training.tf32)
    tokenizer = load_tokenizer(args.model)
    collator = GroupCollator(tokenizer, query_ids, collection.queries, collection.corpus, qrels, negatives,
                             args.group_size, representation.query_max_length, representation.passage_max_length,
                             seed=training.seed, teacher_scores=teacher_scores)
    trainer = ContrastiveTrainer(
        model=encoder, args=training, train_dataset=QueryDataset(query_ids), data_collator=collator,
        processing_class=tokenizer, callbacks=[JsonlLogCallback(), CollatorEpochCallback(collator), CheckpointMarkerCallback(), *callbacks],
        group_size=args.group_size, temperature=args.temperature, across_devices=args.negatives_across_devices,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
    )
    check_world_size(training)
    global_batch = training.per_device_train_batch_size * training.gradient_accumulation_steps * training.world_size
    negatives_per_query = (args.group_size - 1) + (training.per_device_train_batch_size
                                                   * (training.world_size if args.negatives_across_devices else 1) - 1) * args.group_size
    logger.info("representation=%s queries=%d global batch=%d queries; per query: 1 positive, %d hard negatives, "
                "%d negatives in all (hard + in-batch)", representation.representation, len(query_ids), global_batch,
                args.group_size - 1, negatives_per_query)
    if training.should_save:
        output.mkdir(parents=True, exist_ok=True)
        resolved = {"finetune": dataclasses.asdict(args), "representation": dataclasses.asdict(representation),
                    "accelerations": dataclasses.asdict(accelerations),
                    "training": json.loads(training.to_json_string())}
        (output / "dupmae_finetune_config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    started = time.perf_counter()
    train_or_finish(trainer, checkpoint)
    trainer.save_model(str(output))
    if args.interpolate_with_start < 1.0 and training.should_save:
        # Read back from the folder just written, so the result is what `dupmae interpolate` gives.
        interpolate(args.model, output, args.interpolate_with_start, args.missing_head_init).save_pretrained(
            output, tokenizer)
        logger.info("weights interpolated: %g x fine-tuned + %g x %s", args.interpolate_with_start,
                    1.0 - args.interpolate_with_start, args.model)
    logger.info("fine-tuning took %.0f s", time.perf_counter() - started)
    return trainer


def main(argv: list[str]) -> int:
    try:
        finetune(*parse_arguments(argv))
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"dupmae finetune: error: {error}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0
