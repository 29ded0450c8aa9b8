"""The Milvus backend on embedded Milvus Lite (the engine's own embedded build, started by the test):
`dupmae index` -> `dupmae search --backend milvus` equals exact search; re-scoring from the local
index and from vectors fetched back from the engine give identical hits and scores; signed sparse
values survive the sign split (dict and CSR forms alike); an interrupted load resumes; bad URIs,
backends and a foreign local index are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus + milvus-lite (pip install 'dupmae[milvus]')")
pytest.importorskip("milvus_lite", reason="embedded Milvus needs milvus-lite (pip install 'dupmae[milvus]')")

from dupmae.cli import main as cli  # noqa: E402
from dupmae.retrieval.backends.milvus import (EMPTY, MilvusBackend, canonical_pairs, check_uri,  # noqa: E402
                                              NEGATIVE, join_signs, sign_split_dicts, sign_split_matrix)
from dupmae.retrieval.approximate import concatenate  # noqa: E402
from dupmae.retrieval.encode import index_parts, load_part, read_manifest  # noqa: E402
from dupmae.retrieval.trec import read_run  # noqa: E402
from retrieval.test_backends import assert_same, corpus, exact_results, filled, queries  # noqa: E402
from test_encode_search import retriever_dir  # noqa: E402,F401  (fixture)
from test_finetune import write_beir  # noqa: E402


def test_sign_split_is_lossless_and_never_empty():
    vector, empty = sign_split_dicts(np.array([[3, 7, 9], [1, 2, 4]]),
                                     np.array([[0.5, -2.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    assert vector == {3: 0.5, NEGATIVE + 7: 2.0}  # non-negative weights, the sign in the dimension
    assert join_signs(vector) == ([3, 7], [0.5, -2.0])
    assert empty == {EMPTY: 1.0} and join_signs(empty) == ([], [])


def _split_signs_by_hand(indices, values) -> dict:
    """The sign split of one row written out plainly (the module docstring), as the oracle."""
    vector = {}
    for term, value in zip(indices.tolist(), values.tolist()):
        if value != 0:
            vector[term if value > 0 else NEGATIVE + term] = abs(value)
    return vector or {EMPTY: 1.0}


def test_csr_rows_hold_what_the_dict_rows_hold():
    rng = np.random.default_rng(3)
    indices = np.stack([rng.choice(50, size=6, replace=False) for _ in range(9)]).astype(np.int32)
    values = rng.normal(size=(9, 6)).astype(np.float32)
    values[0], values[1, :4] = 0, 0  # a document without weights, one with two
    matrix = sign_split_matrix(indices, values)
    assert matrix.shape == (9, EMPTY + 1) and matrix.dtype == np.float32 and matrix.has_sorted_indices
    dicts = sign_split_dicts(indices, values)
    for row in range(9):
        stored = dict(zip(matrix[row].indices.tolist(), matrix[row].data.tolist()))
        assert stored == _split_signs_by_hand(indices[row], values[row]) == dicts[row]
        # what a fetch gives back (dimension order) is what canonical_pairs makes of the raw pairs
        terms, weights = join_signs(stored)
        kept, kept_values = canonical_pairs(indices[row : row + 1], values[row : row + 1])
        assert kept[0, : len(terms)].tolist() == terms and kept_values[0, : len(terms)].tolist() == weights
        assert not kept[0, len(terms) :].any() and not kept_values[0, len(terms) :].any()
    with pytest.raises(ValueError, match=r"must both be \[n, k\]"):
        sign_split_matrix(indices[0], values[0])


@pytest.mark.parametrize("signed", [False, True])
def test_engine_candidates_rescored_exactly_equal_exact_search(tmp_path, signed):
    rng = np.random.default_rng(0)
    blocks, encoded = corpus(rng, 60, signed), queries(rng, 4, signed)
    blocks[0].sparse_values[0] = 0  # a document without sparse weights is stored too
    engine = MilvusBackend(str(tmp_path / "m.db"), candidates=60, sparse_query_terms=0)
    engine.create({"test": True}, dense_dim=blocks[0].dense.shape[1], sparse=True)
    filled(engine, blocks)
    assert len(engine) == 60
    assert_same(engine.search(encoded, 10).results(encoded.ids), exact_results(blocks, encoded, 10))
    # re-scoring from local vectors: the same hits, bit for bit, without fetching them from the engine
    fetched = engine.search(encoded, 10)
    engine.use_local(concatenate(blocks))
    local = engine.search(encoded, 10)
    assert local.ids == fetched.ids and np.array_equal(local.positions, fetched.positions)
    assert np.array_equal(local.scores, fetched.scores)
    # ... also when the candidates are a few documents of the collection (rows != keys)
    narrow = MilvusBackend(str(tmp_path / "m.db"), candidates=5, sparse_query_terms=3)
    fetched = narrow.search(encoded, 10)
    narrow.use_local(concatenate(blocks))
    local = narrow.search(encoded, 10)
    assert narrow.last_candidates < 20 and local.ids == fetched.ids
    assert np.array_equal(local.positions, fetched.positions) and np.array_equal(local.scores, fetched.scores)
    with pytest.raises(ValueError, match="local vectors hold 17 documents but Milvus collection 'dupmae' holds 60"):
        narrow.use_local(blocks[0])
    renamed = concatenate(blocks)
    renamed.ids = [f"other{i}" for i in range(60)]
    with pytest.raises(ValueError, match="'other0' locally but 'd0000' in Milvus collection"):
        narrow.use_local(renamed)
    # the engine's own fusion: its ranking of the same candidates, reciprocal-rank scores
    fused = MilvusBackend(str(tmp_path / "m.db"), candidates=60, fusion="rrf").search(encoded, 10)
    assert all(len(row) == 10 for row in fused.ids) and np.all(fused.scores[:, 0] < 1)


def test_index_then_search_through_milvus_equals_exact(tmp_path, retriever_dir, capsys):
    beir = tmp_path / "beir"
    write_beir(beir)
    index, uri = tmp_path / "index", str(tmp_path / "engine.db")
    assert cli(["encode", "--model", retriever_dir, "--corpus", str(beir), "--output", str(index), "--part-size", "11"]) == 0
    # an interrupted load (first part only) is resumed by the next `dupmae index`
    engine = MilvusBackend(uri)
    first = load_part(index_parts(index)[0])
    engine.create(read_manifest(index), first.dense.shape[1], True)
    engine.add(first)
    common = ["search", "--model", retriever_dir, "--queries", str(beir / "queries.jsonl"), "--top-k", "5"]
    assert cli([*common, "--backend", "milvus", "--uri", uri, "--output", str(tmp_path / "x.trec")]) == 2
    assert "holds 11 documents but the corpus has 30" in capsys.readouterr().err
    assert cli(["index", "--backend", "milvus", "--uri", uri, "--index", str(index)]) == 0
    assert "added 19 documents" in capsys.readouterr().out
    assert cli([*common, "--index", str(index), "--output", str(tmp_path / "exact.trec")]) == 0
    assert cli([*common, "--backend", "milvus", "--uri", uri, "--candidates", "30", "--sparse-query-terms", "0",
                "--output", str(tmp_path / "milvus.trec")]) == 0
    exact, milvus = read_run(str(tmp_path / "exact.trec")), read_run(str(tmp_path / "milvus.trec"))
    assert set(exact) == set(milvus)
    for query_id in exact:
        assert list(exact[query_id]) == list(milvus[query_id])
        assert np.allclose(list(exact[query_id].values()), list(milvus[query_id].values()), rtol=1e-5)
    # with --index the candidates are re-scored from the index's parts: the same run, byte for byte
    local_args = [*common, "--backend", "milvus", "--uri", uri, "--candidates", "3", "--sparse-query-terms", "2"]
    assert cli([*local_args, "--output", str(tmp_path / "fetched.trec")]) == 0
    assert cli([*local_args, "--index", str(index), "--output", str(tmp_path / "local.trec")]) == 0
    assert (tmp_path / "local.trec").read_text() == (tmp_path / "fetched.trec").read_text()
    # an index of another layout than the one loaded is refused
    other = tmp_path / "other"
    assert cli(["encode", "--model", retriever_dir, "--corpus", str(beir), "--output", str(other),
                "--part-size", "7"]) == 0
    capsys.readouterr()
    assert cli([*local_args, "--index", str(other), "--output", str(tmp_path / "o.trec")]) == 2
    assert "is not the one loaded into Milvus collection 'dupmae'" in capsys.readouterr().err
    # the in-process union backend agrees too
    assert cli([*common, "--index", str(index), "--backend", "union", "--candidates", "30",
                "--output", str(tmp_path / "union.trec")]) == 0
    assert read_run(str(tmp_path / "union.trec")).keys() == exact.keys()
    # a second load of the same index into the same collection adds nothing
    assert cli(["index", "--backend", "milvus", "--uri", uri, "--index", str(index)]) == 0
    assert "added 0 documents" in capsys.readouterr().out


def test_bad_uris_and_backends_are_clear_errors(tmp_path, capsys):
    for uri, message in (("index.sqlite", "must end in .db"), ("ftp://host/x", "unknown scheme"),
                         ("http://", "no host"), (str(tmp_path / "no" / "such" / "x.db"), "does not exist")):
        with pytest.raises(ValueError, match=message):
            check_uri(uri)
    with pytest.raises(ValueError, match="cannot connect to Milvus at 'http://127.0.0.1:9'"):
        MilvusBackend("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="no Milvus collection 'dupmae'"):
        MilvusBackend(str(tmp_path / "empty.db")).manifest()
    assert cli(["index", "--backend", "union", "--uri", "x.db", "--index", str(tmp_path)]) == 2
    assert "built in memory by `dupmae search`" in capsys.readouterr().err
    assert cli(["index", "--backend", "elastic", "--uri", "x.db", "--index", str(tmp_path)]) == 2
    assert "unknown backend 'elastic'" in capsys.readouterr().err
    assert cli(["index", "--backend", "milvus", "--uri", str(tmp_path / "x.db"), "--index", str(tmp_path)]) == 2
    assert "is not a dupmae index" in capsys.readouterr().err
    assert cli(["search", "--model", "m", "--queries", "q.jsonl", "--output", "o", "--backend", "milvus",
                "--uri", "x.txt"]) == 2
    assert "must end in .db" in capsys.readouterr().err
    assert cli(["search", "--model", "m", "--queries", "q.jsonl", "--output", "o"]) == 2
    assert "--index is required" in capsys.readouterr().err
