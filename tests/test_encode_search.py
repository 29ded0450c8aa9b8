"""encode (2 shards, resumed) -> search -> run file equals in-memory `Retriever.search`."""

import json

import numpy as np
import pytest

from dupmae.cli import main as cli
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
from dupmae.modeling.retriever import Retriever
from dupmae.retrieval.encode import index_parts
from dupmae.retrieval.trec import read_run
from test_finetune import tiny_encoder_dir, write_beir
from transformers import AutoTokenizer


@pytest.fixture()
def retriever_dir(tmp_path, wordpiece_dir):
    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    config = RepresentationConfig(representation="dupmae", dense_dim=16, sparse_top_k=6, sparse_activation="relu")
    DupMAEEncoder.from_pretrained(start, config).save_pretrained(tmp_path / "retriever", AutoTokenizer.from_pretrained(start))
    return str(tmp_path / "retriever")


def test_sharded_resumable_encode_then_search_matches_in_memory_search(tmp_path, retriever_dir):
    beir = write_beir(tmp_path / "beir")
    index = tmp_path / "index"
    for shard in ("0/2", "1/2"):
        assert cli(["encode", "--model", retriever_dir, "--corpus", str(beir), "--output", str(index),
                    "--shard", shard, "--part-size", "7"]) == 0
    parts = index_parts(index)
    assert len(parts) == 6  # 15 documents per shard in parts of 7 -> 3 parts each
    stamp = parts[0].stat().st_mtime_ns
    parts[-1].unlink()  # an interrupted shard 1: rerunning writes only the missing part
    assert cli(["encode", "--model", retriever_dir, "--corpus", str(beir), "--output", str(index), "--shard", "1/2",
                "--part-size", "7"]) == 0
    assert len(index_parts(index)) == 6 and parts[0].stat().st_mtime_ns == stamp

    run = tmp_path / "run.trec"
    assert cli(["search", "--model", retriever_dir, "--index", str(index), "--queries", str(beir / "queries.jsonl"),
                "--qrels", str(beir / "qrels" / "train.tsv"), "--top-k", "5", "--output", str(run)]) == 0
    from_index = read_run(str(run))
    corpus = {json.loads(l)["_id"]: json.loads(l) for l in (beir / "corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (beir / "queries.jsonl").read_text().splitlines()}
    in_memory = Retriever.from_pretrained(retriever_dir, show_progress=False).search(queries, corpus, top_k=5)
    assert set(from_index) == set(in_memory)
    for query_id, hits in in_memory.items():
        assert list(from_index[query_id]) == [d for d, _ in hits]
        assert np.allclose(list(from_index[query_id].values()), [s for _, s in hits], rtol=1e-5)


def test_search_refuses_an_incomplete_or_foreign_index(tmp_path, retriever_dir, wordpiece_dir, capsys):
    beir = write_beir(tmp_path / "beir")
    index = tmp_path / "index"
    assert cli(["encode", "--model", retriever_dir, "--corpus", str(beir), "--output", str(index), "--shard", "0/2"]) == 0
    args = ["search", "--model", retriever_dir, "--index", str(index), "--queries", str(beir / "queries.jsonl"),
            "--output", str(tmp_path / "run.trec")]
    assert cli(args) == 2 and "shard is missing" in capsys.readouterr().err
    other = tiny_encoder_dir(tmp_path / "other", wordpiece_dir)
    DupMAEEncoder.from_pretrained(other, RepresentationConfig(representation="cls", dense_dim=0)).save_pretrained(
        tmp_path / "cls", AutoTokenizer.from_pretrained(other))
    args[2] = str(tmp_path / "cls")
    assert cli(args) == 2 and "other representation settings" in capsys.readouterr().err


def test_approximate_dense_candidates_are_rescored_exactly(tmp_path, retriever_dir):
    pytest.importorskip("faiss")
    beir = write_beir(tmp_path / "beir")
    index = tmp_path / "index"
    assert cli(["encode", "--model", retriever_dir, "--corpus", str(beir), "--output", str(index),
                "--part-size", "11"]) == 0
    common = ["search", "--model", retriever_dir, "--index", str(index), "--queries", str(beir / "queries.jsonl")]
    assert cli([*common, "--top-k", "30", "--output", str(tmp_path / "all.trec")]) == 0  # every document, exact
    assert cli([*common, "--top-k", "5", "--output", str(tmp_path / "exact.trec")]) == 0
    # FAISS with exhaustive candidates (one IVF list) through the approximate path reproduces exact search
    assert cli([*common, "--top-k", "5", "--output", str(tmp_path / "faiss.trec"), "--dense-index", "IVF1,Flat",
                "--candidates", "30"]) == 0
    exact, through_faiss = read_run(str(tmp_path / "exact.trec")), read_run(str(tmp_path / "faiss.trec"))
    for query_id in exact:
        assert list(exact[query_id]) == list(through_faiss[query_id])
        assert np.allclose(list(exact[query_id].values()), list(through_faiss[query_id].values()), rtol=1e-5)
    # HNSW finds candidates approximately; whatever it returns carries the exact hybrid score
    assert cli([*common, "--top-k", "5", "--output", str(tmp_path / "hnsw.trec"), "--dense-index", "HNSW8",
                "--candidates", "10"]) == 0
    every = read_run(str(tmp_path / "all.trec"))
    for query_id, hits in read_run(str(tmp_path / "hnsw.trec")).items():
        assert len(hits) == 5
        for doc_id, value in hits.items():
            assert value == pytest.approx(every[query_id][doc_id], rel=1e-5)
    assert cli([*common, "--output", str(tmp_path / "x.trec"), "--dense-index", "NoSuchIndex"]) == 2


def test_encode_keeps_freed_memory_unless_told_not_to(tmp_path, retriever_dir, allocator_calls, capsys):
    beir = write_beir(tmp_path / "beir")
    common = ["encode", "--model", retriever_dir, "--corpus", str(beir), "--part-size", "100"]
    assert cli([*common, "--output", str(tmp_path / "on")]) == 0
    assert allocator_calls == [1]
    assert cli([*common, "--output", str(tmp_path / "off"), "--keep-freed-memory", "false"]) == 0
    assert allocator_calls == [1]
    on, off = (index_parts(tmp_path / name) for name in ("on", "off"))
    assert [p.read_bytes() for p in on] == [p.read_bytes() for p in off]  # where memory comes from changes no vector
    assert cli([*common, "--output", str(tmp_path / "bad"), "--keep-freed-memory", "maybe"]) == 2
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err
