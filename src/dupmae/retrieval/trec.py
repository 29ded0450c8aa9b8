"""TREC run files: ``query_id Q0 doc_id rank score tag``, one retrieved document a line.

Ordering convention (used everywhere in dupmae): within a query, documents are
ranked by score descending, ties broken by document id ascending. `write_run`
writes ranks 1..n in that order, and `dupmae.evaluation.metrics.evaluate`
ranks by the same rule, so a run evaluates the same whether it is scored from
memory or from its file. (trec_eval itself ignores the rank column and breaks
ties by document id *descending*; only tied scores can differ.)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping

from dupmae.data.beir import DataFormatError
from dupmae.data.formats import _numbered_lines

logger = logging.getLogger(__name__)

# What a retriever returns: {query_id: [(doc_id, score), ...]} in any order, or {query_id: {doc_id: score}}.
Results = Mapping[str, Iterable[tuple[str, float]] | Mapping[str, float]]


def ranked(hits: Iterable[tuple[str, float]] | Mapping[str, float]) -> list[tuple[str, float]]:
    """Hits sorted by score descending, then doc id ascending (the dupmae ranking rule)."""
    pairs = hits.items() if isinstance(hits, Mapping) else hits
    return sorted(((str(doc_id), float(score)) for doc_id, score in pairs), key=lambda hit: (-hit[1], hit[0]))


def _check_token(value: str, what: str) -> None:
    if not value or any(character.isspace() for character in value):
        raise ValueError(f"{what} {value!r} cannot be written to a TREC run: it must be non-empty without spaces")


def write_run(path: str, results: Results, tag: str) -> int:
    """Write `results` as a TREC run file; returns the number of lines written.

    Queries are written in sorted id order, documents ranked by score descending
    then doc id ascending, with ranks 1..n. Scores are written with Python's
    shortest round-trip ``repr``, so reading the file back gives the same floats
    (and no ties appear that rounding would have made). The file is written to
    ``path + ".tmp"`` and renamed, so a crash never leaves a half-written run.

    Raises:
        ValueError: a query retrieves the same document twice, a score is not finite,
            or an id or the tag is empty or contains whitespace.
    """
    _check_token(tag, "run tag")
    temporary = f"{path}.tmp"
    lines = 0
    with open(temporary, "w", encoding="utf-8") as handle:
        for query_id in sorted(results):
            _check_token(query_id, "query id")
            hits = ranked(results[query_id])
            seen: set[str] = set()
            for rank, (doc_id, score) in enumerate(hits, start=1):
                _check_token(doc_id, "document id")
                if doc_id in seen:
                    raise ValueError(f"query {query_id!r} retrieves document {doc_id!r} twice")
                if not math.isfinite(score):
                    raise ValueError(f"query {query_id!r}, document {doc_id!r}: score {score} is not finite")
                seen.add(doc_id)
                handle.write(f"{query_id} Q0 {doc_id} {rank} {score!r} {tag}\n")
                lines += 1
    os.replace(temporary, path)
    logger.info("wrote %d lines for %d queries to %s", lines, len(results), path)
    return lines


def read_run(path: str) -> dict[str, dict[str, float]]:
    """Read a TREC run file into ``{query_id: {doc_id: score}}``, checking every line.

    Each non-blank line must have 6 whitespace-separated fields with an integer
    rank and a finite numeric score; a (query, document) pair may appear once.
    The Q0 and tag columns are not interpreted (trec_eval ignores them too).

    Raises:
        DataFormatError: ``path:line: what is wrong``.
        FileNotFoundError: no such file.
    """
    run: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for line_number, line, problem in _numbered_lines(path):
        if problem is not None:
            raise DataFormatError(f"{path}:{line_number}: {problem}")
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DataFormatError(
                f"{path}:{line_number}: expected 6 fields (query_id Q0 doc_id rank score tag), got {len(fields)}"
            )
        query_id, _, doc_id, rank_text, score_text, _ = fields
        try:
            int(rank_text)
        except ValueError:
            raise DataFormatError(f"{path}:{line_number}: rank must be an integer, got {rank_text!r}") from None
        try:
            score = float(score_text)
        except ValueError:
            raise DataFormatError(f"{path}:{line_number}: score must be a number, got {score_text!r}") from None
        if not math.isfinite(score):
            raise DataFormatError(f"{path}:{line_number}: score must be finite, got {score_text!r}")
        key = (query_id, doc_id)
        if key in first_line:
            raise DataFormatError(
                f"{path}:{line_number}: query {query_id!r} retrieves document {doc_id!r} twice "
                f"(first on line {first_line[key]})"
            )
        first_line[key] = line_number
        run.setdefault(query_id, {})[doc_id] = score
    logger.info("read %d lines for %d queries from %s", len(first_line), len(run), path)
    return run
