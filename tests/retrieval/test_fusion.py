"""Hybrid fusion of two runs (`dupmae.retrieval.fusion`, `dupmae fuse`): values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from dupmae.cli import main as cli
from dupmae.retrieval.fusion import choose_weight, combine, fuse, normalise
from dupmae.retrieval.trec import read_run, write_run


def test_minmax_rescales_each_querys_top_depth_to_unit_range():
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"x": -0.5}, "q3": {"u": 2.0, "v": 2.0}, "q4": {}}
    assert normalise(run) == {"q1": {"a": 1.0, "b": 0.5, "c": 0.0}, "q2": {"x": 1.0}, "q3": {"u": 1.0, "v": 1.0},
                              "q4": {}}
    # depth 2: c leaves, and b becomes the minimum
    assert normalise(run, depth=2)["q1"] == {"a": 1.0, "b": 0.0}


def test_rrf_uses_ranks_with_ties_broken_by_doc_id():
    run = {"q": {"b": 1.0, "a": 1.0, "c": 5.0}}
    assert normalise(run, "rrf", rrf_k=10) == {"q": {"c": 1 / 11, "a": 1 / 12, "b": 1 / 13}}
    assert normalise(run, "rrf", depth=1, rrf_k=0) == {"q": {"c": 1.0}}


def test_combine_is_a_convex_combination_over_the_union():
    first = {"q1": {"a": 1.0, "b": 0.5}, "q2": {"x": 1.0}}
    second = {"q1": {"b": 1.0, "c": 0.2}, "q3": {"y": 1.0}}
    fused = combine(first, second, 0.25)
    assert fused["q1"] == pytest.approx({"a": 0.25, "b": 0.25 * 0.5 + 0.75, "c": 0.75 * 0.2})
    assert fused["q2"] == {"x": 0.25} and fused["q3"] == {"y": 0.75}  # a query in one run keeps its hits
    with pytest.raises(ValueError, match="weight"):
        combine(first, second, 1.5)


def test_fuse_at_the_ends_of_the_weight_range_is_one_run():
    neural = {"q": {"a": 0.9, "b": 0.7, "c": 0.1}}
    bm25 = {"q": {"c": 12.0, "d": 3.0}}
    assert fuse(neural, bm25, 1.0)["q"] == pytest.approx({"a": 1.0, "b": 0.75, "c": 0.0, "d": 0.0})
    assert fuse(neural, bm25, 0.0) == {"q": {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0}}
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(neural, bm25, 0.5, method="sum")


def test_choose_weight_picks_the_best_and_the_first_of_ties():
    # fused: d1 = 1 - w, d2 = w, so d1 (the relevant one) is first for w < 0.5, and at 0.5 by doc id
    first = {"q": {"d1": 0.9, "d2": 1.0}}
    second = {"q": {"d1": 5.0, "d2": 1.0}}
    qrels = {"q": {"d1": 1}}
    best, values = choose_weight(first, second, qrels, "ndcg@10", weights=(1.0, 0.7, 0.4, 0.2))
    assert best == 0.4
    assert values == pytest.approx({1.0: 1 / math.log2(3), 0.7: 1 / math.log2(3), 0.4: 1.0, 0.2: 1.0})
    assert choose_weight(first, second, qrels, "NDCG@10", weights=(0.5, 0.6))[0] == 0.5
    with pytest.raises(ValueError, match="no weights"):
        choose_weight(first, second, qrels, weights=())


def test_fuse_command_with_a_weight_and_with_a_dev_choice(tmp_path, capsys):
    neural, bm25 = {"q": {"a": 0.9, "b": 0.7, "c": 0.1}}, {"q": {"c": 12.0, "d": 3.0}}
    write_run(str(tmp_path / "neural.trec"), neural, "n")
    write_run(str(tmp_path / "bm25.trec"), bm25, "b")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq\tc\t1\n")
    runs = ["--runs", str(tmp_path / "neural.trec"), str(tmp_path / "bm25.trec")]
    assert cli(["fuse", *runs, "--weight", "0.5", "--output", str(tmp_path / "half.trec")]) == 0
    half = read_run(str(tmp_path / "half.trec"))
    assert list(half) == ["q"] and half["q"] == pytest.approx(fuse(neural, bm25, 0.5)["q"])
    # chosen on "dev" (the same runs here): c is relevant, and BM25 alone puts it first
    assert cli(["fuse", *runs, "--dev-runs", *runs[1:], "--dev-qrels", str(tmp_path / "qrels.tsv"),
                "--weights", "1,0.8,0.3", "--output", str(tmp_path / "chosen.trec")]) == 0
    report = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert report["weight"] == 0.3 and report["ndcg@10"]["1.0"] < 1.0 == report["ndcg@10"]["0.3"]
    assert read_run(str(tmp_path / "chosen.trec"))["q"] == pytest.approx(fuse(neural, bm25, 0.3)["q"])
    # --top-k keeps the best fused hits: at weight 0.3, c (0.7) then a (0.3)
    assert cli(["fuse", *runs, "--weight", "0.3", "--top-k", "2", "--output", str(tmp_path / "top.trec")]) == 0
    assert read_run(str(tmp_path / "top.trec"))["q"] == pytest.approx({"c": 0.7, "a": 0.3})


@pytest.mark.parametrize("arguments, message", [
    (["--weight", "1.5"], "weight must be in [0, 1]"),
    (["--weight", "0.5", "--depth", "0"], "depth must be >= 1"),
    (["--weight", "0.5", "--top-k", "0"], "--top-k must be >= 1"),
    (["--dev-runs", "x", "y"], "--dev-runs needs --dev-qrels"),
    (["--weight", "0.5", "--dev-qrels", "q.tsv"], "--dev-qrels only goes with --dev-runs"),
])
def test_fuse_command_rejects_bad_input_with_a_message(tmp_path, capsys, arguments, message):
    write_run(str(tmp_path / "a.trec"), {"q": {"a": 1.0}}, "a")
    status = cli(["fuse", "--runs", str(tmp_path / "a.trec"), str(tmp_path / "a.trec"), "--output",
                  str(tmp_path / "out.trec"), *arguments])
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.trec").exists()


def test_fuse_command_names_a_missing_run(tmp_path, capsys):
    assert cli(["fuse", "--runs", str(tmp_path / "none.trec"), str(tmp_path / "none.trec"), "--weight", "0.5",
                "--output", str(tmp_path / "out.trec")]) == 2
    assert "none.trec" in capsys.readouterr().err
