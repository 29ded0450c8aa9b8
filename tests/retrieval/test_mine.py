"""Negative mining: positives removed, depth respected, rank order kept; the `dupmae mine` verb end to end."""

from __future__ import annotations

import json
import sys
import types

import pytest

from dupmae.cli import main as dupmae
from dupmae.retrieval.mine import mine_negatives
from tiny_beir import make_beir_folder

RESULTS = {
    "q1": [("d5", 0.2), ("d1", 0.9), ("d2", 0.7), ("d3", 0.7), ("d4", 0.5)],  # ranked: d1 d2 d3 d4 d5
    "q2": {"d9": 1.0, "d8": 2.0},  # any retriever's shape: a dict works too
    "unjudged": [("d1", 1.0)],
}
QRELS = {
    "q1": {"d1": 1, "d3": 2, "d4": 0},  # d4 is judged non-relevant: still a fine negative
    "q2": {"d7": 1},
    "q3": {"d1": 1},  # judged, but retrieved nothing
    "q4": {"d2": 0},  # no positive: skipped
}


@pytest.fixture
def beir_folder(tmp_path) -> str:
    return make_beir_folder(tmp_path)


def test_positives_removed_depth_respected_rank_order_kept():
    records = mine_negatives(RESULTS, QRELS, depth=4)
    assert records == [
        # top 4 = d1 d2 d3 d4 (d2/d3 tie: doc id ascending); d1, d3 are positives; d5 is below the depth
        {"query_id": "q1", "positives": ["d1", "d3"], "negatives": ["d2", "d4"]},
        {"query_id": "q2", "positives": ["d7"], "negatives": ["d8", "d9"]},
        {"query_id": "q3", "positives": ["d1"], "negatives": []},
    ]
    assert mine_negatives(RESULTS, QRELS, depth=1)[0]["negatives"] == []  # top 1 is the positive d1
    with pytest.raises(ValueError, match="depth"):
        mine_negatives(RESULTS, QRELS, depth=0)


def test_mine_verb_with_bm25(beir_folder, tmp_path, capsys):
    output = tmp_path / "negs.jsonl"
    code = dupmae(["mine", "--model", "bm25", "--corpus", beir_folder, "--qrels", f"{beir_folder}/qrels/train.tsv",
                   "--depth", "3", "--output", str(output), "--threads", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["query_id"] for record in records] == ["q1", "q2", "q3"]
    for record in records:
        assert len(record["negatives"]) <= 3 and not set(record["negatives"]) & set(record["positives"])
    # q1 "protein structures": BM25 hits are d1 (positive) and d6 -> one negative
    assert records[0] == {"query_id": "q1", "positives": ["d1"], "negatives": ["d6"]}
    manifest = json.loads((tmp_path / "negs.jsonl.manifest.json").read_text())
    assert manifest["counts"]["queries"] == 3 and manifest["depth"] == 3
    assert len(manifest["inputs"]["corpus"]["sha256"]) == 64


def test_mine_verb_accepts_a_corpus_file_and_explicit_queries(beir_folder, tmp_path):
    output = tmp_path / "negs.jsonl"
    code = dupmae(["mine", "--corpus", f"{beir_folder}/corpus.jsonl", "--queries", f"{beir_folder}/queries.jsonl",
                   "--qrels", f"{beir_folder}/qrels/train.tsv", "--output", str(output)])  # fmt: skip
    assert code == 0 and len(output.read_text().splitlines()) == 3


def test_dense_mining_with_a_real_tiny_retriever(beir_folder, tmp_path, wordpiece_dir):
    from test_finetune import tiny_encoder_dir
    from transformers import AutoTokenizer

    from dupmae.data.beir import load_corpus, load_queries
    from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
    from dupmae.modeling.retriever import Retriever

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    model = tmp_path / "retriever"
    DupMAEEncoder.from_pretrained(start, RepresentationConfig(dense_dim=8, sparse_top_k=5)).save_pretrained(
        model, AutoTokenizer.from_pretrained(start))
    output = tmp_path / "n.jsonl"
    assert dupmae(["mine", "--model", str(model), "--corpus", beir_folder, "--qrels", f"{beir_folder}/qrels/train.tsv",
                   "--depth", "3", "--output", str(output)]) == 0
    mined = {r["query_id"]: r for r in map(json.loads, output.read_text().splitlines())}
    queries = load_queries(f"{beir_folder}/queries.jsonl")
    expected = Retriever.from_pretrained(model, show_progress=False).search(
        {q: queries[q] for q in mined}, load_corpus(f"{beir_folder}/corpus.jsonl"), top_k=3)
    for query_id, record in mined.items():
        ranking = [d for d, _ in expected[query_id]]
        assert record["negatives"] == [d for d in ranking if d not in record["positives"]]


def test_dense_mining_uses_retriever_search_when_available(beir_folder, tmp_path, monkeypatch):
    calls = {}

    class FakeRetriever:
        @classmethod
        def from_pretrained(cls, path):
            calls["path"] = path
            return cls()

        def search(self, queries, corpus, top_k):
            calls["top_k"], calls["queries"] = top_k, sorted(queries)
            ranking = [(doc_id, 1.0 / (1 + i)) for i, doc_id in enumerate(sorted(corpus))]
            return {query_id: ranking for query_id in queries}

    monkeypatch.setitem(sys.modules, "dupmae.modeling.retriever", types.SimpleNamespace(Retriever=FakeRetriever))
    output = tmp_path / "n.jsonl"
    code = dupmae(["mine", "--model", "my-model", "--corpus", beir_folder, "--qrels", f"{beir_folder}/qrels/train.tsv",
                   "--depth", "2", "--output", str(output)])  # fmt: skip
    assert code == 0
    assert calls == {"path": "my-model", "top_k": 2, "queries": ["q1", "q2", "q3"]}
    first = json.loads(output.read_text().splitlines()[0])
    assert first == {"query_id": "q1", "positives": ["d1"], "negatives": ["d2"]}  # top 2 = d1, d2


def test_mine_verb_reports_unknown_qrels_ids_in_one_line(beir_folder, tmp_path, capsys):
    qrels = tmp_path / "bad.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n", encoding="utf-8")
    code = dupmae(["mine", "--corpus", beir_folder, "--qrels", str(qrels), "--output", str(tmp_path / "n.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{qrels}:3: document id 'nope' is not in the corpus" in err
