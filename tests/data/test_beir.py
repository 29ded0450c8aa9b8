"""BEIR readers: a valid collection loads; every kind of bad line is named by file:line; dev_split."""

from __future__ import annotations

import json
import re

import pytest

from dupmae.data.beir import (
    DataFormatError,
    check_qrels,
    dev_split,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from dupmae.data.formats import CorpusFormatError


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(*records) -> str:
    return "".join((record if isinstance(record, str) else json.dumps(record)) + "\n" for record in records)


def located(path, line: int, problem: str) -> str:
    return f"^{re.escape(str(path))}:{line}: {problem}"


@pytest.fixture
def folder(tmp_path):
    write(tmp_path / "corpus.jsonl", jsonl(
        {"_id": "d1", "title": "Protein folding", "text": "Proteins fold."},
        {"_id": "d2", "text": "No title at all."},
        {"_id": "d3", "title": "Only a title", "text": ""},
        {"_id": "d4", "title": None, "text": "A null title."},
    ))  # fmt: skip
    write(tmp_path / "queries.jsonl", jsonl(
        {"_id": "q1", "text": "protein folding", "metadata": {}},
        {"_id": "q2", "text": "titles"},
        {"_id": "q3", "text": "never judged"},
    ))  # fmt: skip
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n")
    return tmp_path


def test_a_valid_collection_loads_with_only_the_judged_queries(folder):
    collection = load_beir(str(folder), "test")
    assert collection.corpus == {
        "d1": {"title": "Protein folding", "text": "Proteins fold."},
        "d2": {"title": "", "text": "No title at all."},
        "d3": {"title": "Only a title", "text": ""},
        "d4": {"title": "", "text": "A null title."},
    }
    assert collection.queries == {"q1": "protein folding", "q2": "titles"}
    assert collection.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
    assert collection.qrels.line_of[("q2", "d3")] == 4


def test_missing_files_are_named_with_the_expected_layout(folder):
    with pytest.raises(FileNotFoundError, match=r"lacks qrels/dev\.tsv: a BEIR folder holds .*corpus\.jsonl.*"
                       r"queries\.jsonl.*qrels/dev\.tsv.*splits found: test"):  # fmt: skip
        load_beir(str(folder), "dev")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="lacks corpus.jsonl"):
        load_beir(str(folder), "test")


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"_id": "d9", "title": "x", "text": "y"', "invalid JSON"),
        ('["d9", "text"]', "expected a JSON object, got list"),
        ('{"_id": "d9", "title": "x"}', "missing required field 'text'"),
        ('{"title": "x", "text": "y"}', "missing required field '_id'"),
        ('{"_id": 9, "text": "y"}', "field '_id' must be a string, got int"),
        ('{"_id": "d9", "title": 3, "text": "y"}', "field 'title' must be a string, got int"),
        ('{"_id": "d1", "text": "again"}', "duplicate document id 'd1' \\(first seen on line 1\\)"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, bad_line, problem):
    path = write(tmp_path / "corpus.jsonl", jsonl({"_id": "d1", "text": "fine"}, "", bad_line))
    with pytest.raises(DataFormatError, match=located(path, 3, problem)):
        load_corpus(path)


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"_id": "q9"}', "missing required field 'text'"),
        ('{"_id": "q1", "text": "again"}', "duplicate query id 'q1'"),
    ],
)
def test_queries_errors_name_file_and_line(tmp_path, bad_line, problem):
    path = write(tmp_path / "queries.jsonl", jsonl({"_id": "q1", "text": "fine"}, bad_line))
    with pytest.raises(DataFormatError, match=located(path, 2, problem)):
        load_queries(path)


@pytest.mark.parametrize(
    "content, line, problem",
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\tyes\n", 3, "relevance must be an integer, got 'yes'"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1.5\n", 2, "relevance must be an integer"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3 tab-separated fields"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t0\n", 3, "duplicate judgement .* \\(first on line 2\\)"),
        ("q1 0 d1 1\nq1 d2 1\n", 2, "expected 4 whitespace-separated fields"),
        ("q1\td1\t1\n", 1, "expected 4 whitespace-separated fields .* BEIR header"),
    ],
)
def test_qrels_errors_name_file_and_line(tmp_path, content, line, problem):
    path = write(tmp_path / "qrels.tsv", content)
    with pytest.raises(DataFormatError, match=located(path, line, problem)):
        load_qrels(path)


def test_headerless_trec_qrels_are_read(tmp_path):
    path = write(tmp_path / "qrels.txt", "q1 0 d1 1\nq1  0  d2 0\n\nq2 Q0 d1 -1\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": -1}}


def test_errors_are_catchable_as_corpus_format_or_value_errors(tmp_path):
    path = write(tmp_path / "queries.jsonl", "{oops\n")
    with pytest.raises(CorpusFormatError):
        load_queries(path)
    with pytest.raises(ValueError):
        load_queries(path)


def test_unknown_ids_in_qrels_name_the_qrels_file_and_first_line(folder):
    qrels_path = write(folder / "qrels" / "bad.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq7\td1\t1\nq8\td2\t1\n")
    corpus, queries = load_corpus(str(folder / "corpus.jsonl")), load_queries(str(folder / "queries.jsonl"))
    problem = "query id 'q7' is not in the queries file \\(2 unknown query ids in all: 'q7', 'q8'\\)"
    message = located(qrels_path, 3, problem)
    with pytest.raises(DataFormatError, match=message):
        check_qrels(load_qrels(qrels_path), queries, corpus, qrels_path)
    with pytest.raises(DataFormatError, match=located(qrels_path, 3, "query id 'q7'")):
        load_beir(str(folder), "bad")

    qrels_path = write(folder / "qrels" / "bad.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td404\t1\n")
    with pytest.raises(DataFormatError, match=located(qrels_path, 3, "document id 'd404' is not in the corpus")):
        check_qrels(load_qrels(qrels_path), queries, corpus)
    # A plain dict (no line numbers) still gets the file and the ids named.
    with pytest.raises(DataFormatError, match="^elsewhere.tsv: document id 'd404'"):
        check_qrels({"q1": {"d404": 1}}, queries, corpus, "elsewhere.tsv")


def test_dev_split_is_deterministic_disjoint_and_complete():
    qrels = {f"q{i}": {f"d{i}": 1, f"e{i}": 0} for i in range(50)}
    train, dev = dev_split(qrels, fraction=0.2, seed=13)
    assert dev_split(qrels, fraction=0.2, seed=13) == (train, dev)
    assert len(dev) == 10 and len(train) == 40
    assert not set(train) & set(dev) and set(train) | set(dev) == set(qrels)
    assert all(train_or_dev[q] == qrels[q] for train_or_dev in (train, dev) for q in train_or_dev)
    # Only the set of ids matters, not the order they come in.
    assert set(dev_split(dict(reversed(list(qrels.items()))))[1]) == set(dev)
    assert set(dev_split(qrels, seed=14)[1]) != set(dev)
    assert len(dev_split({"a": {"x": 1}, "b": {"y": 1}}, fraction=0.01)[1]) == 1  # never an empty part
    with pytest.raises(ValueError, match="fraction"):
        dev_split(qrels, fraction=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        dev_split({"a": {"x": 1}})


def test_empty_documents_are_kept_and_counted_and_empty_queries_never_searched(tmp_path, caplog):
    from dupmae.data.beir import empty_documents, searchable_queries

    write(tmp_path / "corpus.jsonl", jsonl(
        {"_id": "d1", "title": "Protein folding", "text": "Proteins fold."},
        {"_id": "d2", "title": " ", "text": "\t"},
        {"_id": "d3", "text": ""},
    ))  # fmt: skip
    write(tmp_path / "queries.jsonl", jsonl(
        {"_id": "q1", "text": "protein"}, {"_id": "q2", "text": ""}, {"_id": "q3", "text": "  "},
        {"_id": "q4", "text": "unjudged"},
    ))  # fmt: skip
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n")
    corpus = load_corpus(str(tmp_path / "corpus.jsonl"))
    assert list(corpus) == ["d1", "d2", "d3"] and empty_documents(corpus) == ["d2", "d3"]
    queries = load_queries(str(tmp_path / "queries.jsonl"))
    assert queries == {"q1": "protein", "q2": "", "q3": "  ", "q4": "unjudged"}
    with caplog.at_level("WARNING"):
        assert searchable_queries(queries) == {"q1": "protein", "q4": "unjudged"}
    assert "2 queries with an empty text (e.g. 'q2') are not searched" in caplog.text
    collection = load_beir(str(tmp_path), "test")
    assert collection.queries == {"q1": "protein"}  # judged and not empty
    assert set(collection.qrels) == {"q1", "q2"}  # the judged empty query stays judged: it scores 0
