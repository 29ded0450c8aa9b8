"""TREC run files: ranks and tie order on write, exact round trip, every malformed line named by file:line."""

from __future__ import annotations

import re

import pytest

from dupmae.data.beir import DataFormatError
from dupmae.retrieval.trec import read_run, ranked, write_run


def test_write_ranks_by_score_then_doc_id_and_reads_back_exactly(tmp_path):
    path = str(tmp_path / "run.trec")
    results = {
        "q2": [("b", 0.5), ("a", 0.5), ("c", 0.1 + 0.2)],  # a tie, and a float with no short decimal
        "q1": {"x": 3.0, "y": -1.25},
    }
    assert write_run(path, results, tag="test") == 5
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines == [
        "q1 Q0 x 1 3.0 test",
        "q1 Q0 y 2 -1.25 test",
        "q2 Q0 a 1 0.5 test",  # tie: doc id ascending
        "q2 Q0 b 2 0.5 test",
        "q2 Q0 c 3 0.30000000000000004 test",
    ]
    assert read_run(path) == {"q1": {"x": 3.0, "y": -1.25}, "q2": {"a": 0.5, "b": 0.5, "c": 0.1 + 0.2}}
    assert not (tmp_path / "run.trec.tmp").exists()


def test_ranked_orders_score_descending_then_doc_id():
    assert ranked({"b": 1.0, "a": 1.0, "c": 2.0}) == [("c", 2.0), ("a", 1.0), ("b", 1.0)]


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("q1 Q0 d2 2 0.5", "expected 6 fields"),
        ("q1 Q0 d2 second 0.5 t", "rank must be an integer"),
        ("q1 Q0 d2 2 high t", "score must be a number"),
        ("q1 Q0 d2 2 nan t", "score must be finite"),
        ("q1 Q0 d1 2 0.5 t", "query 'q1' retrieves document 'd1' twice \\(first on line 1\\)"),
    ],
)
def test_read_run_names_file_and_line_of_a_malformed_line(tmp_path, bad_line, problem):
    path = tmp_path / "bad.trec"
    path.write_text(f"q1 Q0 d1 1 0.9 t\n\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))}:3: {problem}"):
        read_run(str(path))


def test_write_run_refuses_what_cannot_be_read_back(tmp_path):
    path = str(tmp_path / "run.trec")
    with pytest.raises(ValueError, match="twice"):
        write_run(path, {"q": [("d", 1.0), ("d", 0.5)]}, tag="t")
    with pytest.raises(ValueError, match="without spaces"):
        write_run(path, {"q": [("doc 1", 1.0)]}, tag="t")
    with pytest.raises(ValueError, match="run tag"):
        write_run(path, {"q": [("d", 1.0)]}, tag="my tag")
    with pytest.raises(ValueError, match="not finite"):
        write_run(path, {"q": [("d", float("inf"))]}, tag="t")
