"""Readers for BEIR-format retrieval collections, validated line by line.

A BEIR folder holds::

    FOLDER/corpus.jsonl        {"_id": str, "title": str (optional), "text": str} per line
    FOLDER/queries.jsonl       {"_id": str, "text": str} per line (other fields are ignored)
    FOLDER/qrels/SPLIT.tsv     header "query-id<TAB>corpus-id<TAB>score", then one judgement a line

``.jsonl.gz`` works wherever ``.jsonl`` does. Qrels may also be headerless TREC
qrels (``qid 0 docid relevance``, whitespace-separated), as MS MARCO and TREC
ship them.

Every problem is a `DataFormatError` whose message starts with ``path:line:``:
malformed JSON, missing or non-string fields, empty ids, duplicate ids or
judgements, non-integer relevance, wrong column counts, and qrels that name
queries or documents the collection does not have.

Real collections are messy, and what is valid is kept: an empty document is a
document (it is indexed, never matches, and is counted: `empty_documents`); an
empty query is read, and `searchable_queries` leaves it out of every search
with a warning, so when it is judged it scores 0 like any query that retrieved
nothing. Queries no one judged are never searched.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

from dupmae.data.formats import CorpusFormatError, _numbered_lines, parse_json_object

logger = logging.getLogger(__name__)

BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")


class DataFormatError(CorpusFormatError):
    """A line of a corpus, queries, qrels or run file that cannot be read; the message names file and line.

    A subclass of `CorpusFormatError` (and so of `ValueError`), so callers that catch either keep working.
    """


class Qrels(dict):
    """``{query_id: {doc_id: relevance}}`` that remembers where each judgement came from.

    Behaves as a plain dict; ``path`` and ``line_of[(query_id, doc_id)]`` let `check_qrels`
    name the file and line of an unknown id. Built by `load_qrels`.
    """

    def __init__(self, *args, path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.path = path
        self.line_of: dict[tuple[str, str], int] = {}


@dataclass
class Collection:
    """One split of a BEIR collection: every document, the split's judged queries and their qrels."""

    corpus: dict[str, dict[str, str]]  # doc id -> {"title": str, "text": str}
    queries: dict[str, str]  # query id -> text, only queries judged in `qrels`
    qrels: Qrels  # query id -> {doc id: relevance}


def _records(path: str):
    """Yield ``(line_number, record)`` for each non-blank line of a jsonl file (JSON objects only)."""
    for line_number, line, problem in _numbered_lines(path):
        if problem is None and not line.strip():
            continue  # blank lines separate records
        if problem is not None:
            raise DataFormatError(f"{path}:{line_number}: {problem}")
        try:
            record = parse_json_object(line)
        except ValueError as error:
            raise DataFormatError(f"{path}:{line_number}: {error}") from None
        yield line_number, record


def _string_field(record: dict, name: str, path: str, line_number: int, required: bool = True) -> str:
    """``record[name]`` as a string; a missing optional field (or JSON null) is ``""``."""
    if name not in record or (not required and record[name] is None):
        if required:
            fields = ", ".join(sorted(record)) or "none"
            raise DataFormatError(f"{path}:{line_number}: missing required field {name!r} (fields: {fields})")
        return ""
    value = record[name]
    if not isinstance(value, str):
        raise DataFormatError(f"{path}:{line_number}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _check_new_id(identifier: str, first_line: dict[str, int], path: str, line_number: int, kind: str) -> None:
    if not identifier.strip():
        raise DataFormatError(f"{path}:{line_number}: empty {kind} id")
    if identifier in first_line:
        raise DataFormatError(
            f"{path}:{line_number}: duplicate {kind} id {identifier!r} (first seen on line {first_line[identifier]})"
        )
    first_line[identifier] = line_number


def load_corpus(path: str) -> dict[str, dict[str, str]]:
    """Read ``corpus.jsonl``: ``{doc_id: {"title": title, "text": text}}`` in file order.

    ``title`` may be absent or null (read as ``""``). A document whose title and text are both
    empty is kept (it is a valid document that no query matches) and counted in the log line.
    """
    corpus: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for line_number, record in _records(path):
        doc_id = _string_field(record, "_id", path, line_number)
        title = _string_field(record, "title", path, line_number, required=False)
        text = _string_field(record, "text", path, line_number)
        _check_new_id(doc_id, first_line, path, line_number, "document")
        corpus[doc_id] = {"title": title, "text": text}
    empty = empty_documents(corpus)
    logger.info("read %d documents from %s%s", len(corpus), path, f" ({len(empty)} empty)" if empty else "")
    return corpus


def is_empty_text(text: str | None) -> bool:
    return not (text or "").strip()


def empty_documents(corpus: dict[str, dict[str, str]]) -> list[str]:
    """Ids of the documents whose title and text are both empty (or only whitespace), in corpus order."""
    return [doc_id for doc_id, document in corpus.items()
            if is_empty_text(document.get("title")) and is_empty_text(document.get("text"))]


def load_queries(path: str) -> dict[str, str]:
    """Read ``queries.jsonl``: ``{query_id: text}`` in file order (other fields, e.g. metadata, are ignored).

    An empty query text is read as ``""`` (see `searchable_queries`, which leaves it out of searches)."""
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_number, record in _records(path):
        query_id = _string_field(record, "_id", path, line_number)
        text = _string_field(record, "text", path, line_number)
        _check_new_id(query_id, first_line, path, line_number, "query")
        queries[query_id] = text
    empty = sum(1 for text in queries.values() if is_empty_text(text))
    logger.info("read %d queries from %s%s", len(queries), path, f" ({empty} empty)" if empty else "")
    return queries


def searchable_queries(queries: dict[str, str], query_ids=None, where: str = "the queries") -> dict[str, str]:
    """``{query_id: text}`` of the queries to search: those of `query_ids` (default: all, in `queries`'
    order), without the empty ones, which are logged in one warning. A judged empty query is then
    missing from every run and scores 0 (`dupmae.evaluation.metrics.evaluate`). Every id of `query_ids`
    must be in `queries` (`check_qrels` says where one is not)."""
    query_ids = list(queries if query_ids is None else query_ids)
    empty = [query_id for query_id in query_ids if is_empty_text(queries[query_id])]
    if empty:
        logger.warning("%s: %d quer%s with an empty text (e.g. %r) %s not searched; judged, %s 0",
                       where, len(empty), "y" if len(empty) == 1 else "ies", empty[0],
                       "is" if len(empty) == 1 else "are", "it scores" if len(empty) == 1 else "they score")
    skipped = set(empty)
    return {query_id: queries[query_id] for query_id in query_ids if query_id not in skipped}


def _is_beir_header(line: str) -> bool:
    return tuple(field.strip().lower() for field in line.split("\t")) == BEIR_QRELS_HEADER


def load_qrels(path: str) -> Qrels:
    """Read qrels: ``{query_id: {doc_id: relevance}}`` (a `Qrels`, which keeps line numbers).

    The layout is chosen by the first non-blank line: the BEIR header
    ``query-id<TAB>corpus-id<TAB>score`` means three tab-separated columns per line;
    anything else means TREC qrels, four whitespace-separated columns
    ``query_id iteration doc_id relevance`` (the iteration column is ignored).
    Relevance must be an integer (negative values are kept; only > 0 counts as relevant).
    """
    qrels = Qrels(path=path)
    layout = None
    for line_number, line, problem in _numbered_lines(path):
        if problem is not None:
            raise DataFormatError(f"{path}:{line_number}: {problem}")
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if layout is None:
            layout = "beir" if _is_beir_header(line) else "trec"
            if layout == "beir":
                continue
        if layout == "beir":
            fields = line.split("\t")
            if len(fields) != 3:
                raise DataFormatError(
                    f"{path}:{line_number}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                    f"got {len(fields)}"
                )
            query_id, doc_id, relevance_text = (field.strip() for field in fields)
        else:
            fields = line.split()
            if len(fields) != 4:
                raise DataFormatError(
                    f"{path}:{line_number}: expected 4 whitespace-separated fields (TREC qrels: query_id "
                    f"iteration doc_id relevance) or the BEIR header 'query-id<TAB>corpus-id<TAB>score' "
                    f"on the first line, got {len(fields)} fields"
                )
            query_id, _, doc_id, relevance_text = fields
        if not query_id or not doc_id:
            raise DataFormatError(f"{path}:{line_number}: empty query id or document id")
        try:
            relevance = int(relevance_text)
        except ValueError:
            problem = f"relevance must be an integer, got {relevance_text!r}"
            raise DataFormatError(f"{path}:{line_number}: {problem}") from None
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            first = qrels.line_of[(query_id, doc_id)]
            raise DataFormatError(
                f"{path}:{line_number}: duplicate judgement of query {query_id!r}, document {doc_id!r} "
                f"(first on line {first})"
            )
        judged[doc_id] = relevance
        qrels.line_of[(query_id, doc_id)] = line_number
    if not qrels:
        raise DataFormatError(f"{path}:1: no judgements in the file")
    logger.info("read %d judgements of %d queries from %s", len(qrels.line_of), len(qrels), path)
    return qrels


def _unknown_ids_message(kind: str, unknown: list[tuple[int | None, str]], source: str, qrels_path: str) -> str:
    """``path:line: <kind> id 'x' is not in <source> (N unknown ... in all: a, b, c, ...)``."""
    unknown.sort(key=lambda item: (item[0] is None, item[0] or 0))
    line_number, first_id = unknown[0]
    distinct = list(dict.fromkeys(identifier for _, identifier in unknown))
    shown = ", ".join(repr(identifier) for identifier in distinct[:5]) + (", ..." if len(distinct) > 5 else "")
    where = f"{qrels_path}:{line_number}" if line_number is not None else qrels_path
    return f"{where}: {kind} id {first_id!r} is not in {source} ({len(distinct)} unknown {kind} ids in all: {shown})"


def check_qrels(
    qrels: dict[str, dict[str, int]],
    queries: dict[str, str],
    corpus: dict[str, dict[str, str]],
    qrels_path: str | None = None,
) -> None:
    """Raise `DataFormatError` if the qrels name a query or a document the collection lacks.

    The message names the qrels file, the line of the first offending judgement (when
    `qrels` came from `load_qrels`) and up to five of the unknown ids. Query ids are
    checked before document ids.
    """
    qrels_path = qrels_path or getattr(qrels, "path", None) or "qrels"
    line_of = getattr(qrels, "line_of", {})

    def first_line(query_id: str) -> int | None:
        lines = [line_of[(query_id, doc_id)] for doc_id in qrels[query_id] if (query_id, doc_id) in line_of]
        return min(lines) if lines else None

    unknown_queries = [(first_line(query_id), query_id) for query_id in qrels if query_id not in queries]
    if unknown_queries:
        raise DataFormatError(_unknown_ids_message("query", unknown_queries, "the queries file", qrels_path))
    unknown_documents = [
        (line_of.get((query_id, doc_id)), doc_id)
        for query_id, judged in qrels.items()
        for doc_id in judged
        if doc_id not in corpus
    ]
    if unknown_documents:
        raise DataFormatError(_unknown_ids_message("document", unknown_documents, "the corpus", qrels_path))


def _find(folder: str, stem: str) -> str | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def beir_paths(folder: str, split: str) -> tuple[str, str, str]:
    """``(corpus, queries, qrels)`` paths of one split of a BEIR folder; FileNotFoundError says what is missing."""
    expected = (
        f"a BEIR folder holds {os.path.join(folder, 'corpus.jsonl')}, {os.path.join(folder, 'queries.jsonl')} "
        f"and {os.path.join(folder, 'qrels', split + '.tsv')} (.jsonl.gz also accepted)"
    )
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder; {expected}")
    corpus_path, queries_path = _find(folder, "corpus"), _find(folder, "queries")
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    missing = [
        name
        for name, present in (
            ("corpus.jsonl", corpus_path),
            ("queries.jsonl", queries_path),
            (f"qrels/{split}.tsv", os.path.isfile(qrels_path)),
        )
        if not present
    ]
    if missing:
        qrels_dir = os.path.join(folder, "qrels")
        names = os.listdir(qrels_dir) if os.path.isdir(qrels_dir) else []
        splits = sorted(name[: -len(".tsv")] for name in names if name.endswith(".tsv"))
        found = f"; splits found: {', '.join(splits)}" if splits else ""
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: {expected}{found}")
    return corpus_path, queries_path, qrels_path


def load_beir(folder: str, split: str) -> Collection:
    """Load one split of a BEIR folder, keeping only the queries judged in ``qrels/SPLIT.tsv`` that have a
    text (`searchable_queries`); the qrels keep every judged query, so an empty one scores 0.

    Raises:
        FileNotFoundError: a file is missing (the message lists the expected layout and the splits found).
        DataFormatError: any malformed line, or qrels naming unknown queries or documents.
    """
    corpus_path, queries_path, qrels_path = beir_paths(folder, split)
    corpus = load_corpus(corpus_path)
    all_queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    check_qrels(qrels, all_queries, corpus, qrels_path)
    queries = searchable_queries(all_queries, qrels, qrels_path)
    return Collection(corpus=corpus, queries=queries, qrels=qrels)


def dev_split(
    qrels: dict[str, dict[str, int]], fraction: float = 0.2, seed: int = 13
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Split *training* qrels by query into ``(train_qrels, dev_qrels)`` for choosing settings.

    Hyper-parameters are chosen on the dev part and the test split is only used
    to report, never to tune. The split depends only on the set of query ids,
    ``fraction`` and ``seed``: ids are sorted, shuffled with ``random.Random(seed)``
    and the first ``round(fraction * n)`` (at least 1, at most n - 1) go to dev.
    All judgements of a query stay together, so no query is in both parts.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    query_ids = sorted(qrels)
    if len(query_ids) < 2:
        raise ValueError(f"need at least 2 judged queries to split, got {len(query_ids)}")
    random.Random(seed).shuffle(query_ids)
    dev_size = min(max(round(fraction * len(query_ids)), 1), len(query_ids) - 1)
    dev_ids = set(query_ids[:dev_size])
    # Keep the qrels' own order inside each part, so output files stay in input order.
    train = {query_id: dict(judged) for query_id, judged in qrels.items() if query_id not in dev_ids}
    dev = {query_id: dict(judged) for query_id, judged in qrels.items() if query_id in dev_ids}
    return train, dev


def warn_unknown_judged_documents(qrels: dict[str, dict[str, int]], known_ids, qrels_path: str, where: str) -> int:
    """Log a warning counting the judged document ids of `qrels` that are not in `known_ids` (they can never be
    retrieved, so they count as misses in every metric); returns how many distinct ids that is."""
    known = known_ids if isinstance(known_ids, (set, frozenset, dict)) else set(known_ids)
    unknown = sorted({doc for docs in qrels.values() for doc in docs if doc not in known})
    if unknown:
        pairs = sum(1 for docs in qrels.values() for doc in docs if doc not in known)
        logger.warning("%s: %d judged document id(s) (%d judgement(s)) are not in %s, e.g. %s; they can never be "
                       "retrieved and count as misses", qrels_path, len(unknown), pairs, where, unknown[:5])
    return len(unknown)
