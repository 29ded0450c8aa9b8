"""Metrics against values computed by hand, including the three pytrec_eval traps, and `dupmae evaluate`."""

from __future__ import annotations

import json
import math
import re

import pytest

from dupmae.cli import main as dupmae
from dupmae.evaluation.metrics import evaluate, parse_metric
from dupmae.retrieval.trec import read_run, write_run

QRELS = {
    "qA": {"d1": 1, "d3": 1, "d9": 0},  # two relevant; d9 judged non-relevant (never retrieved)
    "qB": {"d2": 2},  # graded relevance 2
    "qC": {"d5": 1},  # judged, but absent from the run: must count as 0
}
RUN = {
    # ranked by score, ties by doc id ascending: d3 (0.9), d1 (0.8), d2 (0.8), d4 (0.1).
    # trec_eval's own tie rule (doc id descending) would put d2 before d1.
    "qA": {"d3": 0.9, "d2": 0.8, "d1": 0.8, "d4": 0.1},
    "qB": {"d4": 2.0, "d5": 1.5, "d2": 1.0},  # the relevant d2 is at rank 3
    "qZ": {"d1": 1.0},  # no qrels: ignored
}

# By hand. DCG@k = sum over ranks r <= k of rel_r / log2(r + 1); nDCG = DCG / ideal DCG.
#   qA: ranks 1..3 have rel 1, 1, 0 -> DCG = 1/log2(2) + 1/log2(3); ideal is the same -> 1.0
#       (with d2 ahead of d1 it would be (1 + 1/log2(4)) / (1 + 1/log2(3)) = 0.9197)
#   qB: rel 2 at rank 3 -> DCG = 2/log2(4) = 1; ideal = 2/log2(2) = 2 -> 0.5
#   qC: 0
NDCG_3 = (1.0 + 0.5 + 0.0) / 3
# MRR@k = 1 / rank of the first relevant document if that rank <= k, else 0.
#   @2:  qA 1/1, qB 0 (rank 3 > 2; uncut recip_rank would say 1/3), qC 0
#   @10: qA 1, qB 1/3, qC 0
MRR_2 = (1.0 + 0.0 + 0.0) / 3
MRR_10 = (1.0 + 1 / 3 + 0.0) / 3
# Recall@k = relevant documents in the top k / all relevant documents (rel >= 1).
#   @2:   qA {d3, d1} = 2/2, qB 0/1, qC 0      @100: qA 1, qB 1, qC 0
RECALL_2 = (1.0 + 0.0 + 0.0) / 3
RECALL_100 = (1.0 + 1.0 + 0.0) / 3
# P@2 = relevant in the top 2 / 2:  qA 2/2, qB 0, qC 0
P_2 = (1.0 + 0.0 + 0.0) / 3
# AP = mean over relevant documents of precision at their rank (0 for unretrieved ones):
#   qA (1/1 + 2/2) / 2 = 1, qB (1/3) / 1, qC 0.   MAP@2 cuts the run at 2: qA 1, qB 0, qC 0.
MAP = (1.0 + 1 / 3 + 0.0) / 3
MAP_2 = (1.0 + 0.0 + 0.0) / 3

ALL = "ndcg@3,mrr@2,mrr@10,recall@2,recall@100,P@2,map,map@2"
EXPECTED = {
    "ndcg@3": NDCG_3, "mrr@2": MRR_2, "mrr@10": MRR_10, "recall@2": RECALL_2, "recall@100": RECALL_100,
    "precision@2": P_2, "map": MAP, "map@2": MAP_2,
}  # fmt: skip


def test_every_metric_matches_the_hand_computation():
    summary = evaluate(RUN, QRELS, ALL, per_query=True)
    assert summary["metrics"] == pytest.approx(EXPECTED, abs=1e-12)
    assert summary["num_queries"] == 3
    assert summary["num_queries_missing_from_run"] == 1
    assert summary["num_unjudged_run_queries"] == 1
    assert summary["per_query"]["qC"] == {name: 0.0 for name in EXPECTED}
    assert summary["per_query"]["qB"]["ndcg@3"] == pytest.approx(0.5)
    assert summary["per_query"]["qA"]["ndcg@3"] == pytest.approx(1.0)  # the tie went our way
    assert "qZ" not in summary["per_query"]


def test_the_hand_formula_for_the_tie_broken_the_other_way():
    # Our order is the one the run writer gives ranks by; changing the scores to break the tie the
    # other way changes nDCG to the value the comment above works out.
    other = {**RUN, "qA": {"d3": 0.9, "d2": 0.8, "d1": 0.7, "d4": 0.1}}
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert evaluate(other, QRELS, ["ndcg@3"], per_query=True)["per_query"]["qA"]["ndcg@3"] == pytest.approx(expected)


def test_list_shaped_results_and_a_run_file_give_the_same_numbers(tmp_path):
    as_lists = {query_id: list(hits.items()) for query_id, hits in RUN.items()}
    assert evaluate(as_lists, QRELS, ALL)["metrics"] == pytest.approx(EXPECTED, abs=1e-12)
    path = str(tmp_path / "run.trec")
    write_run(path, RUN, tag="t")
    assert evaluate(read_run(path), QRELS, ALL)["metrics"] == pytest.approx(EXPECTED, abs=1e-12)


def test_metric_names():
    assert parse_metric("NDCG@10").measure == "ndcg_cut.10"
    assert parse_metric("p@5").name == "precision@5"
    assert parse_metric("mrr@10").run_depth == 10 and parse_metric("recall@10").run_depth is None
    for bad in ("foo@3", "ndcg@0", "recall", "mrr@x"):
        with pytest.raises(ValueError):
            parse_metric(bad)
    with pytest.raises(ValueError, match="empty"):
        evaluate(RUN, {}, ["ndcg@10"])


def write_qrels(path, qrels) -> str:
    rows = "".join(f"{q}\t{d}\t{r}\n" for q, docs in qrels.items() for d, r in docs.items())
    path.write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return str(path)


def test_evaluate_verb_prints_a_table_and_writes_json(tmp_path, capsys):
    run, qrels, output = str(tmp_path / "run.trec"), write_qrels(tmp_path / "qrels.tsv", QRELS), tmp_path / "s.json"
    write_run(run, RUN, tag="t")
    code = dupmae(["evaluate", "--run", run, "--qrels", qrels, "--metrics", "ndcg@3,mrr@10", "--per-query",
                   "--output", str(output)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"ndcg@3\s+0\.5000", printed) and re.search(r"mrr@10\s+0\.4444", printed)
    summary = json.loads(output.read_text())
    assert summary["metrics"] == pytest.approx({"ndcg@3": NDCG_3, "mrr@10": MRR_10})
    assert summary["num_queries"] == 3 and set(summary["per_query"]) == {"qA", "qB", "qC"}


def test_evaluate_verb_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    run, qrels = tmp_path / "run.trec", write_qrels(tmp_path / "qrels.tsv", QRELS)
    run.write_text("qA Q0 d1 1 0.5 t\nqA Q0 d2 two 0.4 t\n", encoding="utf-8")
    assert dupmae(["evaluate", "--run", str(run), "--qrels", qrels]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"dupmae evaluate: error: {run}:2: rank must be an integer, got 'two'"
    write_run(str(run), RUN, tag="t")
    assert dupmae(["evaluate", "--run", str(run), "--qrels", qrels, "--metrics", "ndcg@10,bogus"]) == 2
    assert "unknown metric 'bogus'" in capsys.readouterr().err


def test_evaluate_verb_compares_with_a_baseline_run(tmp_path, capsys):
    pytest.importorskip("scipy")
    qrels = write_qrels(tmp_path / "qrels.tsv", QRELS)
    run, baseline, output = str(tmp_path / "run.trec"), str(tmp_path / "base.trec"), tmp_path / "s.json"
    write_run(run, RUN, tag="t")
    # the baseline finds qB's d2 at rank 1 (nDCG@3 1 instead of 0.5) and nothing for qA
    write_run(baseline, {"qA": {"d4": 1.0}, "qB": {"d2": 3.0, "d4": 2.0}}, tag="b")
    code = dupmae(["evaluate", "--run", run, "--baseline", baseline, "--qrels", qrels, "--metrics", "ndcg@3",
                   "--significance", "t-test", "--output", str(output)])  # fmt: skip
    assert code == 0
    summary = json.loads(output.read_text())
    assert "per_query" not in summary and summary["metrics"]["ndcg@3"] == pytest.approx(NDCG_3)
    assert summary["baseline"]["metrics"]["ndcg@3"] == pytest.approx(1 / 3)
    test = summary["baseline"]["paired"]["ndcg@3"]
    # per-query differences (qA, qB, qC) = (1, -0.5, 0): mean 1/6, sample sd sqrt(42/72), so
    # t = (1/6) / (sd / sqrt 3) = 0.37796; with 2 degrees of freedom the two-sided p is 1 - t / sqrt(t^2 + 2)
    t = (1 / 6) / (math.sqrt(42 / 72) / math.sqrt(3))
    assert test["n"] == 3 and test["mean_difference"] == pytest.approx(1 / 6)
    assert test["statistic"] == pytest.approx(t) and test["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    printed = capsys.readouterr().out
    assert re.search(r"ndcg@3\s+0\.5000\s+0\.3333\s+\+0\.1667\s+0\.7418", printed), printed
