"""Corpus readers: plain text and jsonl(.gz) files in, document strings out.

Two layouts are understood, chosen by file name:

* ``*.jsonl`` / ``*.jsonl.gz``: one JSON object per line with a required string
  field ``text`` and an optional ``title``. This covers BEIR ``corpus.jsonl``
  (``_id``, ``title``, ``text``) and Wikipedia dumps (``id``, ``title``, ``text``).
  The document is ``title + " " + text`` when the title is non-empty.
* anything else (``*.txt``, ``*.txt.gz``, ...): one document per non-empty line.

Blank lines are separators, not documents, in both layouts. Every other
line is either a document, a malformed record (``CorpusFormatError`` naming
the file and 1-based line number, or counted when ``on_error="skip"``) or an
empty document (a record whose text is only whitespace), which is always
counted, never dropped silently.

Lines are read as bytes and decoded one at a time so that invalid UTF-8 is
reported with its line number, like any other malformed line.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("raise", "skip")


class CorpusFormatError(ValueError):
    """A corpus line that cannot be read as a document; the message names file and line."""


@dataclass
class SourceStats:
    """What reading one corpus file produced (filled in while the reader runs)."""

    path: str
    documents: int = 0
    skipped_malformed: int = 0
    skipped_empty: int = 0
    truncated_after_line: int | None = None  # a damaged compressed stream: nothing after this line was read

    def as_dict(self) -> dict:
        return asdict(self)


def expand_corpus_paths(patterns: Iterable[str]) -> list[str]:
    """Expand files and glob patterns into a list of absolute file paths.

    Each pattern expands to its sorted ``glob.glob`` matches (``**`` allowed);
    a plain path is its own match. Order follows the patterns, and a file named
    by two patterns is read once.

    Raises:
        FileNotFoundError: a pattern matches nothing.
        IsADirectoryError: a match is a directory.
        FileNotFoundError: a match is not a regular file (a socket, a broken link...).
    """
    paths: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"corpus pattern {pattern!r} matches no file")
        for match in matches:
            path = os.path.abspath(match)
            if os.path.isdir(path):
                raise IsADirectoryError(f"corpus path {path} is a directory, expected a .txt or .jsonl(.gz) file")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"corpus path {path} is not a regular file")
            if path in seen:
                logger.warning("corpus file %s is named more than once; reading it once", path)
                continue
            seen.add(path)
            paths.append(path)
    return paths


def is_jsonl(path: str) -> bool:
    """True for ``*.jsonl`` and ``*.jsonl.gz`` (case-insensitive)."""
    name = path.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def file_sha256(path: str, block_size: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes as stored (compressed bytes for ``.gz``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


STREAM_LOST = "unreadable data, the rest of the file is lost"


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _numbered_lines(path: str) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield ``(line_number, text, problem)``: the decoded line, or why it could not be decoded.

    A damaged gzip stream ends the file with one ``problem`` line (what follows is unreadable).
    """
    line_number = 0
    with _open_binary(path) as handle:
        try:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield line_number, None, f"invalid UTF-8 ({error.reason} at byte {error.start})"
                    continue
                if line_number == 1:
                    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not content
                yield line_number, text, None
        except (OSError, EOFError, zlib.error) as error:
            # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError.
            yield line_number + 1, None, f"{STREAM_LOST} ({error})"


def parse_json_object(line: str) -> dict:
    """One jsonl line as a dict; ValueError (without location: callers add file:line) otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def _jsonl_document(line: str) -> str:
    """The document text of one jsonl record; ValueError (without location) when malformed."""
    record = parse_json_object(line)
    if "text" not in record:
        raise ValueError(f"missing required field 'text' (fields: {', '.join(sorted(record)) or 'none'})")
    text = record["text"]
    if not isinstance(text, str):
        raise ValueError(f"field 'text' must be a string, got {type(text).__name__}")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"field 'title' must be a string or absent, got {type(title).__name__}")
    if title and title.strip():
        return f"{title} {text}"
    return text


def read_documents(path: str, on_error: str = "raise", stats: SourceStats | None = None) -> Iterator[str]:
    """Yield the documents of one corpus file, in file order.

    Args:
        path: a ``.jsonl``/``.jsonl.gz`` file, or a plain text file (optionally ``.gz``).
        on_error: ``"raise"`` raises ``CorpusFormatError`` on the first malformed line;
            ``"skip"`` logs it, counts it in ``stats.skipped_malformed`` and goes on.
        stats: updated in place (documents, skipped_malformed, skipped_empty).

    Raises:
        CorpusFormatError: ``"<path>:<line>: <what is wrong>"``.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    stats = stats if stats is not None else SourceStats(path)
    jsonl = is_jsonl(path)
    for line_number, line, problem in _numbered_lines(path):
        if problem is None and not line.strip():
            continue  # blank lines separate records; they are not documents
        if problem is None and jsonl:
            try:
                document = _jsonl_document(line)
            except ValueError as error:
                problem = str(error)
        elif problem is None:
            document = line.rstrip("\r\n")
        if problem is not None:
            message = f"{path}:{line_number}: {problem}"
            if on_error == "raise":
                raise CorpusFormatError(message)
            if problem.startswith(STREAM_LOST):  # not one bad line: the file ends here
                stats.truncated_after_line = line_number - 1
                logger.warning("%s is damaged or truncated: only its first %d lines could be read, the rest is "
                               "lost (%s)", path, line_number - 1, problem)
                break
            logger.warning("skipping malformed line: %s", message)
            stats.skipped_malformed += 1
            continue
        if not document.strip():
            stats.skipped_empty += 1
            continue
        stats.documents += 1
        yield document
