"""Search backends (`dupmae.retrieval.backends`): every one agrees with exact search when its
candidates cover the corpus; the union of dense and sparse candidates finds a document that only
its sparse half matches, which dense-only candidates miss; bad names are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from dupmae.retrieval.backends import Backend, Hits, make_backend
from dupmae.retrieval.backends.exact import ExactBackend
from dupmae.retrieval.backends.rescored import FaissDense, Rescored, SparseInverted, union_rows
from dupmae.retrieval.index import DocumentBlock, QueryBlock, block_scores

VOCAB, K, DIM = 120, 8, 8


def corpus(rng, count: int, signed: bool = False) -> list[DocumentBlock]:
    """Blocks of 17 documents; sparse values in [0.5, 1.5), or of both signs."""
    blocks = []
    for start in range(0, count, 17):
        n = min(17, count - start)
        indices = np.stack([rng.choice(VOCAB, size=K, replace=False) for _ in range(n)]).astype(np.int32)
        values = (rng.random((n, K)) + 0.5).astype(np.float32)
        if signed:
            values *= rng.choice([-1.0, 1.0], size=(n, K)).astype(np.float32)
        blocks.append(DocumentBlock([f"d{start + i:04d}" for i in range(n)],
                                    rng.normal(size=(n, DIM)).astype(np.float32), indices, values))
    return blocks


def queries(rng, count: int, signed: bool = False) -> QueryBlock:
    sparse = rng.normal(size=(count, VOCAB)).astype(np.float32)
    return QueryBlock([f"q{i}" for i in range(count)], rng.normal(size=(count, DIM)).astype(np.float32),
                      sparse if signed else np.maximum(sparse, 0))


def exact_results(blocks, encoded, top_k):
    backend = ExactBackend()
    for block in blocks:
        backend.add(block)
    return backend.search(encoded, top_k).results(encoded.ids)


def assert_same(results, expected):
    assert set(results) == set(expected)
    for query_id, hits in expected.items():
        assert [d for d, _ in results[query_id]] == [d for d, _ in hits], query_id
        assert np.allclose([s for _, s in results[query_id]], [s for _, s in hits], rtol=1e-5, atol=1e-5)


def filled(backend, blocks):
    for block in blocks:
        backend.add(block)
    return backend


@pytest.mark.parametrize("name,signed", [("faiss", False), ("sparse", False), ("union", False), ("sparse", True),
                                         ("union", True)])
def test_backends_with_covering_candidates_equal_exact_search(name, signed):
    rng = np.random.default_rng(0)
    blocks, encoded = corpus(rng, 60, signed), queries(rng, 5, signed)
    backend = filled(make_backend(name, dense_index="Flat", candidates=60, sparse_query_terms=0), blocks)
    assert isinstance(backend, Backend) and len(backend) == 60
    assert_same(backend.search(encoded, 10).results(encoded.ids), exact_results(blocks, encoded, 10))


@pytest.mark.parametrize("signed", [False, True])
def test_inverted_index_gives_exact_sparse_dot_products_of_its_kept_terms(signed):
    rng = np.random.default_rng(1)
    blocks, encoded = corpus(rng, 50, signed), queries(rng, 70, signed)  # 70 queries: two query chunks
    documents = DocumentBlock([i for b in blocks for i in b.ids], None, np.concatenate([b.sparse_indices for b in blocks]),
                              np.concatenate([b.sparse_values for b in blocks]))
    for terms in (0, 5):
        index = filled(SparseInverted(candidates=50, query_terms=terms), blocks)
        kept = QueryBlock(encoded.ids, None, index.query_weights(encoded.sparse))
        assert np.all(np.count_nonzero(kept.sparse, axis=1) <= (terms or VOCAB))
        truth = block_scores(kept, documents)  # [Q, N] sparse dot over the kept terms
        hits = index.search(encoded, 50)
        assert hits.ids is None and np.all(hits.positions >= 0)  # every document, each once
        assert all(len(set(row)) == 50 for row in hits.positions)
        assert np.allclose(hits.scores, np.take_along_axis(truth, hits.positions, 1), atol=1e-5)
        assert np.all(np.diff(hits.scores, axis=1) <= 1e-6)  # best first
    # kept terms are the largest |weight|: a negative weight counts as much as a positive one
    weights = SparseInverted(query_terms=1).query_weights(np.array([[0.5, -2.0, 1.0]], dtype=np.float32))
    assert weights.tolist() == [[0.0, -2.0, 0.0]]


def sparse_only_match(rng):
    """200 documents and one query; document `d0123` has a dense vector opposite to the query's (the
    lowest dense score of all) but shares the query's heaviest terms with large weights: exact search
    ranks it first."""
    blocks = corpus(rng, 200)
    encoded = queries(rng, 1)
    heavy = np.argsort(-encoded.sparse[0])[:K]
    block, row = blocks[123 // 17], 123 % 17
    block.dense[row] = -3 * encoded.dense[0]
    block.sparse_indices[row], block.sparse_values[row] = heavy, 20.0
    return blocks, encoded


def test_union_finds_a_document_that_only_its_sparse_half_matches():
    faiss = pytest.importorskip("faiss")
    blocks, encoded = sparse_only_match(np.random.default_rng(2))
    exact = exact_results(blocks, encoded, 10)
    assert exact["q0"][0][0] == "d0123"
    dense_only = filled(make_backend("faiss", dense_index="HNSW16", candidates=20), blocks)
    assert "d0123" not in dict(dense_only.search(encoded, 10).results(encoded.ids)["q0"])  # never a dense candidate
    union = filled(make_backend("union", dense_index="HNSW16", candidates=20, sparse_query_terms=16), blocks)
    found = union.search(encoded, 10).results(encoded.ids)["q0"]
    assert found[0] == exact["q0"][0]  # found, with its exact score
    assert union.last_candidates <= 40 and faiss is not None


def test_union_rows_keeps_each_candidate_once():
    rows = union_rows(np.array([[3, 1, -1, 3, 2, 1], [0, 0, 0, -1, -1, -1]]))
    assert [sorted(x for x in r if x >= 0) for r in rows.tolist()] == [[1, 2, 3], [0]]


def test_faiss_ivf_is_trained_on_everything_added_before_the_first_search():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    blocks, encoded = corpus(rng, 60), queries(rng, 3)
    backend = Rescored([FaissDense("IVF1,Flat", candidates=60)])
    filled(backend, blocks[:2])
    first = backend.search(encoded, 5)
    filled(backend, blocks[2:])  # added after the index was built
    assert_same(backend.search(encoded, 5).results(encoded.ids), exact_results(blocks, encoded, 5))
    assert isinstance(first, Hits)


def test_bad_backend_names_and_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backend 'hnsw'; choose one of exact, faiss"):
        make_backend("hnsw")
    with pytest.raises(ValueError, match="needs --uri"):
        make_backend("milvus")
    with pytest.raises(ValueError, match="--uri is for an engine backend"):
        make_backend("union", uri="x.db")
    with pytest.raises(ValueError, match="the faiss backend needs a dense part"):
        make_backend("faiss", dense=False)
    with pytest.raises(ValueError, match="the sparse backend needs a sparse part"):
        make_backend("sparse", sparse=False)
    union = make_backend("union", sparse=False)  # a cls representation: dense candidates only
    assert [type(g).__name__ for g in union.generators] == ["FaissDense"]
