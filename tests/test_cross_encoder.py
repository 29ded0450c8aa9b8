"""The cross-encoder teacher with a tiny BERT: train-reranker, rerank (re-orders by the teacher's
logits), score-pairs (cache round trip and resume)."""

import json

import numpy as np
import pytest

from dupmae.cli import main as cli
from dupmae.data.finetune import load_teacher_scores
from dupmae.modeling.cross_encoder import load_cross_encoder, score_pairs
from dupmae.modeling.retriever import document_text
from dupmae.retrieval.trec import ranked, read_run, write_run
from test_finetune import tiny_encoder_dir, write_beir


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, wordpiece_dir):
    """A tiny BERT trained 2 steps as a cross-encoder by `dupmae train-reranker` (held-out dev queries)."""
    root = tmp_path_factory.mktemp("teacher")
    start = tiny_encoder_dir(root / "start", wordpiece_dir)
    beir = write_beir(root / "beir")
    output = root / "reranker"
    assert cli(["train-reranker", "--model", start, "--data", str(beir), "--negatives", str(beir / "negs.jsonl"),
                "--output", str(output), "--negatives-per-query", "2", "--max-steps", "2", "--max-length", "32",
                "--per-device-train-batch-size", "8", "--dev-fraction", "0.25", "--logging-steps", "1",
                "--disable-tqdm", "true"]) == 0
    return {"beir": beir, "model": output, "root": root}


def test_train_reranker_writes_a_cross_encoder_that_loads(teacher):
    from dupmae.training.reranker import training_rows

    model = load_cross_encoder(teacher["model"])
    assert model.num_labels == 1
    log = [json.loads(line) for line in (teacher["model"] / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    # rows: each positive (label 1) and `per_query` negatives drawn from the top `depth`, never a positive
    rows = training_rows({"q": "protein"}, {d: {"text": d} for d in "abcdef"}, {"q": {"a": 1, "b": 0}},
                         {"q": ["a", "b", "c", "d", "e", "f"]}, depth=4, per_query=2, seed=1)
    assert rows["label"] == [1.0, 0.0, 0.0] and rows["passage"][0] == "a"
    assert set(rows["passage"][1:]) <= {"b", "c", "d"} and len(set(rows["passage"][1:])) == 2


def test_listwise_groups_one_row_per_positive_and_no_ragged_queries():
    from dupmae.training.reranker import training_groups

    corpus = {d: {"text": d} for d in "abcdefg"}
    qrels = {"q": {"a": 1, "b": 2, "c": 0}, "short": {"a": 1}, "none": {"c": 0}}
    negatives = {"q": list("abcdefg"), "short": ["a", "b"], "none": list("defg")}
    rows = training_groups({"q": "protein", "short": "cell", "none": "x"}, corpus, qrels, negatives,
                           depth=5, per_query=2, seed=1)
    assert list(rows) == ["query", "positive", "negative_1", "negative_2"]
    assert rows["query"] == ["protein", "protein"] and rows["positive"] == ["a", "b"]  # "short": 1 negative < 2
    chosen = {rows["negative_1"][0], rows["negative_2"][0]}
    assert len(chosen) == 2 and chosen <= {"c", "d", "e"}  # top 5 minus the positives a, b; grade-0 c allowed
    assert [rows["negative_1"][1], rows["negative_2"][1]] == [rows["negative_1"][0], rows["negative_2"][0]]


def test_listwise_loss_is_softmax_cross_entropy_over_the_groups_logits(teacher):
    import torch

    from dupmae.training.reranker import listwise_loss

    model = load_cross_encoder(teacher["model"])
    model.eval()  # no dropout: the loss's forward and `score_pairs` see the same network
    queries, positives = ["protein folding", "cell growth"], ["protein folds", "cells grow"]
    negatives = [["stars shine", "rain falls"], ["folding paper", "protein"]]
    columns = [queries, positives, [n[0] for n in negatives], [n[1] for n in negatives]]
    with torch.no_grad():
        loss = listwise_loss(model)(columns, None).item()
    expected = 0.0
    for query, positive, group in zip(queries, positives, negatives):
        logits = score_pairs(model, [(query, p) for p in [positive, *group]]).astype(np.float64)
        expected += -(logits[0] - np.log(np.exp(logits).sum())) / len(queries)
    assert loss == pytest.approx(expected, abs=1e-5)


def test_train_reranker_bce_and_bad_loss(teacher, tmp_path):
    start = teacher["root"] / "start"
    common = ["train-reranker", "--model", str(start), "--data", str(teacher["beir"]), "--negatives",
              str(teacher["beir"] / "negs.jsonl"), "--max-steps", "1", "--max-length", "32", "--disable-tqdm", "true"]
    assert cli(common + ["--loss", "bce", "--output", str(tmp_path / "bce")]) == 0
    assert load_cross_encoder(tmp_path / "bce").num_labels == 1
    config = json.loads((tmp_path / "bce" / "dupmae_reranker_config.json").read_text())
    assert config["reranker"]["loss"] == "bce"
    assert cli(common + ["--loss", "pairwise", "--output", str(tmp_path / "bad")]) == 2


def test_rerank_orders_the_top_k_by_the_teachers_logits(teacher, tmp_path):
    beir = teacher["beir"]
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (beir / "queries.jsonl").read_text().splitlines()}
    run = {"q0": {f"d{i}": 10.0 - i for i in range(8)}, "q1": {f"d{i}": float(i) for i in range(3)}}
    write_run(str(tmp_path / "first.trec"), run, "first")
    output = tmp_path / "reranked.trec"
    assert cli(["rerank", "--cross-encoder", str(teacher["model"]), "--run", str(tmp_path / "first.trec"),
                "--corpus", str(beir), "--top-k", "5", "--bf16", "false", "--output", str(output)]) == 0
    reranked = read_run(str(output))
    model = load_cross_encoder(teacher["model"])
    for query_id, hits in run.items():
        top = [d for d, _ in ranked(hits)[:5]]
        logits = score_pairs(model, [(queries[query_id], document_text(corpus[d])) for d in top])
        expected = [d for _, d in sorted(zip(-logits, top))]  # the teacher's order (ties: doc id)
        order = [d for d, _ in ranked(reranked[query_id])]
        assert order[:len(top)] == expected
        assert order[len(top):] == [d for d, _ in ranked(hits)[5:]]  # the rest: the first run's order, below
        assert np.allclose([reranked[query_id][d] for d in expected], sorted(logits, reverse=True), atol=1e-5)
    cached = load_teacher_scores(f"{output}.scores.jsonl")
    assert set(cached) == {"q0", "q1"} and len(cached["q0"]) == 5 and len(cached["q1"]) == 3


def test_score_pairs_cache_round_trip_and_resume(teacher, tmp_path):
    beir = teacher["beir"]
    output = tmp_path / "teacher_scores.jsonl"
    flags = ["score-pairs", "--cross-encoder", str(teacher["model"]), "--data", str(beir), "--negatives",
             str(beir / "negs.jsonl"), "--depth", "3", "--dev-fraction", "0.25", "--bf16", "false", "--output", str(output)]
    assert cli(flags) == 0
    scores = load_teacher_scores(output)
    negatives = {json.loads(line)["query_id"]: json.loads(line)["negatives"]
                 for line in (beir / "negs.jsonl").read_text().splitlines()}
    assert len(scores) == 12  # 16 judged queries, 4 held out as dev (as finetune --dev-fraction 0.25)
    model = load_cross_encoder(teacher["model"])
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (beir / "queries.jsonl").read_text().splitlines()}
    for query_id, values in scores.items():
        docs = [f"d{query_id[1:]}"] + negatives[query_id][:3]  # the positive, then the top 3 negatives
        assert list(values) == docs
        expected = score_pairs(model, [(queries[query_id], document_text(corpus[d])) for d in docs])
        assert np.allclose(list(values.values()), expected, atol=1e-5)
    # an interrupted run (half the lines in .partial, the last one torn) resumes to the same file
    lines = output.read_text().splitlines(keepends=True)
    output.unlink()
    (tmp_path / "teacher_scores.jsonl.partial").write_text("".join(lines[:6]) + lines[6][:20])
    assert cli(flags) == 0
    resumed = load_teacher_scores(output)
    assert list(resumed) == list(scores)
    for query_id in scores:
        assert resumed[query_id] == pytest.approx(scores[query_id], abs=1e-5)
    assert not (tmp_path / "teacher_scores.jsonl.partial").exists()
