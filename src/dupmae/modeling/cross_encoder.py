"""A cross-encoder teacher: sentence-transformers' `CrossEncoder`, loaded from a local folder only.

Used by `dupmae train-reranker` (which trains one), `dupmae rerank` (re-scores a run's top k) and
`dupmae score-pairs` (the distillation targets). Scores are the raw logits of the single output
(no sigmoid): a softmax over them is what the distillation term compares.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def load_cross_encoder(path: str | Path, max_length: int | None = None, device: str | None = None):
    """`CrossEncoder(path, num_labels=1)` from a local folder: a trained cross-encoder, or any encoder
    (e.g. all-MiniLM-L6-v2) that then gets a fresh one-logit classification head."""
    from sentence_transformers import CrossEncoder

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a local model folder (no config.json); hub names are not fetched")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CrossEncoder(str(folder), num_labels=1, max_length=max_length, device=device, local_files_only=True)
    if model.num_labels != 1:
        raise ValueError(f"{folder}: a cross-encoder with {model.num_labels} outputs; one relevance logit is needed")
    return model


def score_pairs(model, pairs: Sequence[tuple[str, str]], batch_size: int = 32, bf16: bool = False,
                show_progress: bool = False) -> np.ndarray:
    """The relevance logit of every (query, passage) pair: float32 `[len(pairs)]` (`bf16`: autocast)."""
    import torch

    if not pairs:
        return np.zeros(0, dtype=np.float32)
    device_type = torch.device(model.device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bool(bf16)):
        scores = model.predict(list(pairs), batch_size=batch_size, activation_fn=torch.nn.Identity(),
                               convert_to_numpy=True, show_progress_bar=show_progress)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


Group = tuple[str, str, list[tuple[str, str]]]  # (query id, query text, [(doc id, doc text), ...])


def score_groups(model, groups: Iterable[Group], output: str | Path, batch_size: int = 32, bf16="auto",
                 pairs_per_write: int = 512, reuse_output: bool = False) -> dict[str, dict[str, float]]:
    """Score every group's (query, document) pairs and write `{"query_id", "scores": {doc: logit}}` lines.

    Resumable: records go to `OUTPUT.partial` as soon as a few hundred pairs are scored; a rerun reads
    the complete lines there, skips those queries and goes on; the finished file is renamed to
    `output` (so `output` exists complete or not at all). With `reuse_output` (a pipeline stage,
    whose folder is tied to its settings), an existing `output` counts as scored too: only missing
    queries are scored. Returns `{query id: {doc id: logit}}`.
    """
    from dupmae.platform.precision import resolve_bf16

    output = Path(output)
    partial = Path(f"{output}.partial")
    done: dict[str, dict[str, float]] = {}
    if reuse_output and output.is_file() and not partial.is_file():
        os.replace(output, partial)
    if partial.is_file():
        kept = []
        for line in partial.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line) if line.endswith("\n") else None  # a torn last line is dropped
            except json.JSONDecodeError:
                record = None
            if record is None:
                break
            done[record["query_id"]] = record["scores"]
            kept.append(line)
        partial.write_text("".join(kept), encoding="utf-8")
        logger.info("resuming %s: %d queries already scored", partial, len(done))
    use_bf16 = resolve_bf16(bf16, model.device, "cross-encoder scoring")
    with open(partial, "a", encoding="utf-8") as handle:
        pending: list[Group] = []

        def flush() -> None:
            pairs = [(query, text) for _, query, docs in pending for _, text in docs]
            logits = iter(score_pairs(model, pairs, batch_size, use_bf16).tolist())
            for query_id, _, docs in pending:
                scores = {doc_id: next(logits) for doc_id, _ in docs}
                done[query_id] = scores
                handle.write(json.dumps({"query_id": query_id, "scores": scores}) + "\n")
            handle.flush()
            pending.clear()

        for group in groups:
            if group[0] in done:
                continue
            pending.append(group)
            if sum(len(docs) for _, _, docs in pending) >= pairs_per_write:
                flush()
        if pending:
            flush()
    os.replace(partial, output)
    return done


def add_scoring_arguments(parser) -> None:
    """The flags of every verb that runs a cross-encoder over (query, passage) pairs (rerank, score-pairs)."""
    from dupmae.config import positive_int

    parser.add_argument("--max-length", type=positive_int, default=None, help="tokens per (query, passage) pair")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="pairs per forward pass (default: 32)")
    parser.add_argument("--bf16", default="auto", help="auto (native bf16 only), true or false (default: auto)")
