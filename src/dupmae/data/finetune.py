"""Training groups for contrastive fine-tuning: a query, one positive, `group_size - 1` hard negatives.

Sampling (which positive, which negatives) uses a generator seeded by `(seed, epoch, query index)`,
so a group does not depend on batch composition, process count or resumption.

With a teacher's scores (`dupmae score-pairs`), negatives are drawn from the scored ones only, and
each batch carries `teacher_scores` `[B, G]` in group order (NaN for a random top-up negative).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dupmae.data.collator import example_generator
from dupmae.modeling.retriever import document_text


def _records_by_query(path: str | Path, read, expected: str) -> dict[str, object]:
    """``{query_id: read(record)}`` of a jsonl file, one record per query; a bad or repeated line is a
    `ValueError` naming the file and line (`expected` describes a good one)."""
    records = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                query_id, value = str(record["query_id"]), read(record)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: expected {expected} ({error})") from error
            if query_id in records:
                raise ValueError(f"{path}:{number}: duplicate query_id {query_id!r}")
            records[query_id] = value
    return records


def load_negatives(path: str | Path) -> dict[str, list[str]]:
    """negs.jsonl (`{"query_id", "negatives": [...]}` per line, best first) -> {qid: [doc ids]}."""
    return _records_by_query(path, lambda record: [str(d) for d in record["negatives"]],
                             '{"query_id", "negatives": [...]}')


def load_teacher_scores(path: str | Path) -> dict[str, dict[str, float]]:
    """teacher_scores.jsonl (`{"query_id", "scores": {doc_id: score}}` per line) -> {qid: {doc id: score}}."""
    return _records_by_query(path, lambda record: {str(d): float(v) for d, v in record["scores"].items()},
                             '{"query_id", "scores": {doc_id: score}}')


class QueryDataset(torch.utils.data.Dataset):
    """Item i is `{"query_index": i}`; the collator looks up texts (keeps the dataset trivially picklable)."""

    def __init__(self, query_ids: list[str]) -> None:
        self.query_ids = query_ids

    def __len__(self) -> int:
        return len(self.query_ids)

    def __getitem__(self, index: int) -> dict:
        return {"query_index": index}


@dataclass
class GroupCollator:
    """Builds `[B, Lq]` query and `[B * group_size, Lp]` passage batches, positive first in each group.

    Negatives come from `negatives[qid]` (hard negatives, positives already removed); when a query has
    fewer than needed, the rest are drawn at random from the corpus (never a positive of the query).
    """

    tokenizer: object
    query_ids: list[str]
    queries: dict[str, str]
    corpus: dict[str, dict]
    qrels: dict[str, dict[str, int]]
    negatives: dict[str, list[str]] = field(default_factory=dict)
    group_size: int = 8
    query_max_length: int = 64
    passage_max_length: int = 256
    seed: int = 42
    epoch: int = 0
    teacher_scores: dict[str, dict[str, float]] | None = None  # {qid: {doc id: score}} from `dupmae score-pairs`

    def __post_init__(self) -> None:
        self.doc_ids = list(self.corpus)

    def group(self, index: int) -> tuple[str, list[str]]:
        """(query text, [positive, negative, ...]) for the query at `index`."""
        query_id = self.query_ids[index]
        generator = example_generator(self.seed, self.epoch, index)
        positives = sorted(d for d, relevance in self.qrels[query_id].items() if relevance > 0)
        chosen = [positives[int(torch.randint(len(positives), (1,), generator=generator))]]
        pool = [d for d in self.negatives.get(query_id, []) if d in self.corpus and d not in positives]
        if self.teacher_scores is not None:  # only negatives the teacher scored (score-pairs --depth)
            scored = self.teacher_scores.get(query_id, {})
            pool = [d for d in pool if d in scored]
        need = self.group_size - 1
        if pool and need:
            order = torch.randperm(len(pool), generator=generator)[:need].tolist()
            chosen += [pool[i] for i in order]
        while len(chosen) < self.group_size:  # top up with random documents
            candidate = self.doc_ids[int(torch.randint(len(self.doc_ids), (1,), generator=generator))]
            if candidate not in positives and candidate not in chosen:
                chosen.append(candidate)
        return self.queries[query_id], chosen

    def _tokenize(self, texts: list[str], max_length: int, prefix: str) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(texts, max_length=max_length, truncation=True, padding=True,
                                return_special_tokens_mask=True, return_tensors="pt")
        return {f"{prefix}_{name}": tokens[name] for name in ("input_ids", "attention_mask", "special_tokens_mask")}

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        groups = [self.group(int(e["query_index"])) for e in examples]
        query_texts = [query for query, _ in groups]
        passage_texts = [document_text(self.corpus[d]) for _, docs in groups for d in docs]
        batch = {**self._tokenize(query_texts, self.query_max_length, "query"),
                 **self._tokenize(passage_texts, self.passage_max_length, "passage")}
        if self.teacher_scores is not None:
            nan = float("nan")
            batch["teacher_scores"] = torch.tensor(  # [B, G], group order (positive first)
                [[self.teacher_scores.get(self.query_ids[int(e["query_index"])], {}).get(d, nan) for d in docs]
                 for e, (_, docs) in zip(examples, groups)], dtype=torch.float32)
        return batch
