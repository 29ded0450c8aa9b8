"""Exact hybrid scoring (`HybridScorer`) and the running top-k (`TopK`) against brute force; memory
held by a search does not grow with the number of parts."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from dupmae.retrieval.index import QUERY_CHUNK, DocumentBlock, HybridScorer, QueryBlock, TopK
from dupmae.retrieval.search import search_blocks

VOCAB, K, DIM = 97, 9, 8


def random_documents(rng, count: int, start: int = 0, index_dtype=np.int32) -> DocumentBlock:
    indices = np.stack([rng.choice(VOCAB, size=K, replace=False) for _ in range(count)]).astype(index_dtype) \
        if count else np.zeros((0, K), dtype=index_dtype)
    return DocumentBlock([f"d{start + i:05d}" for i in range(count)], rng.normal(size=(count, DIM)).astype(np.float32),
                         indices, rng.random((count, K)).astype(np.float32) + 0.5)


def random_queries(rng, count: int) -> QueryBlock:
    return QueryBlock([f"q{i}" for i in range(count)], rng.normal(size=(count, DIM)).astype(np.float32),
                      np.maximum(rng.normal(size=(count, VOCAB)), 0).astype(np.float32))


def brute_force(queries: QueryBlock, documents: DocumentBlock, dense=True, sparse=True) -> np.ndarray:
    """float64 loops over every (query, document) pair: the definition of the score."""
    scores = np.zeros((len(queries.ids), len(documents.ids)))
    for q in range(len(queries.ids)):
        for d in range(len(documents.ids)):
            if dense:
                scores[q, d] += float(np.dot(queries.dense[q].astype(np.float64), documents.dense[d]))
            if sparse:
                scores[q, d] += sum(float(queries.sparse[q, i]) * float(v)
                                    for i, v in zip(documents.sparse_indices[d], documents.sparse_values[d]))
    return scores


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64, np.uint16])
def test_hybrid_scores_equal_brute_force_across_query_chunks(index_dtype):
    rng = np.random.default_rng(0)
    queries = random_queries(rng, QUERY_CHUNK + 6)  # two chunks, the second padded to 16 columns
    documents = random_documents(rng, 23, index_dtype=index_dtype)
    scores = HybridScorer(queries)(documents)  # [n, Q]
    assert scores.shape == (23, QUERY_CHUNK + 6)
    np.testing.assert_allclose(scores.numpy().T, brute_force(queries, documents), rtol=1e-5, atol=1e-5)


def test_dense_only_and_sparse_only_representations():
    rng = np.random.default_rng(1)
    queries, documents = random_queries(rng, 5), random_documents(rng, 11)
    dense_only = QueryBlock(queries.ids, queries.dense, None)
    sparse_only = QueryBlock(queries.ids, None, queries.sparse)
    np.testing.assert_allclose(HybridScorer(dense_only)(documents).numpy().T,
                               brute_force(queries, documents, sparse=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(HybridScorer(sparse_only)(documents).numpy().T,
                               brute_force(queries, documents, dense=False), rtol=1e-5, atol=1e-5)


def test_running_top_k_over_many_blocks_equals_top_k_of_everything(monkeypatch):
    monkeypatch.setattr(TopK, "prune_every", 40)  # prune often, to check ids survive pruning
    rng = np.random.default_rng(2)
    queries, k = random_queries(rng, 4), 6
    sizes = [0, 1, 7, 3, 30, 0, 12, 5, 25, 9, 2, 40]  # empty blocks, blocks smaller than k, larger
    blocks, start = [], 0
    for size in sizes:
        blocks.append(random_documents(rng, size, start))
        start += size
    everything = DocumentBlock([i for b in blocks for i in b.ids], np.concatenate([b.dense for b in blocks]),
                               np.concatenate([b.sparse_indices for b in blocks]),
                               np.concatenate([b.sparse_values for b in blocks]))
    expected = brute_force(queries, everything)
    exclude = [{"d00004"}, set(), {"d00050", "nope"}, set()]
    for q, excluded in enumerate(exclude):
        for doc_id in excluded & set(everything.ids):
            expected[q, everything.ids.index(doc_id)] = -np.inf

    scorer, best = HybridScorer(queries), TopK(len(queries.ids), k)
    for block in blocks:
        best.add_by_document(scorer(block), block.ids, exclude=exclude)
        assert best.scores.shape == (4, best.capacity) and best.fill.max() <= best.capacity  # fixed buffers
    assert best.seen == sum(sizes)
    results = best.results(queries.ids)
    scores, positions = best.arrays()
    for q, query_id in enumerate(queries.ids):
        top = np.argsort(-expected[q], kind="stable")[:k]
        assert [doc for doc, _ in results[query_id]] == [everything.ids[j] for j in top]
        np.testing.assert_allclose([s for _, s in results[query_id]], expected[q, top], rtol=1e-5)
        assert positions[q].tolist() == top.tolist()
        assert np.all(np.diff(scores[q]) <= 0)


@pytest.mark.parametrize("trend", ["increasing", "decreasing", "shuffled"])
def test_top_k_when_later_blocks_beat_every_earlier_hit(trend):
    """Increasing scores: every block brings more candidates than the buffers hold (the block
    top-k path); decreasing: none after the first; shuffled: the threshold path."""
    rng = np.random.default_rng(4)
    k, blocks, size = 3, 12, 300  # capacity k + 256 < size: an increasing block overflows it
    columns = {"increasing": np.arange(blocks * size), "decreasing": np.arange(blocks * size)[::-1],
               "shuffled": rng.permutation(blocks * size)}[trend]
    everything = np.stack([columns * 1.0, -columns * 0.5]).astype(np.float32)  # [2, N]: two queries
    ids = [f"d{i:05d}" for i in range(blocks * size)]
    best = TopK(2, k)
    for start in range(0, blocks * size, size):
        best.add(everything[:, start : start + size], ids[start : start + size])
    results = best.results(["up", "down"])
    for q, query_id in enumerate(["up", "down"]):
        top = np.argsort(-everything[q], kind="stable")[:k]
        assert [doc for doc, _ in results[query_id]] == [ids[j] for j in top]


def test_results_break_score_ties_by_document_id_and_drop_excluded_hits():
    best = TopK(1, 3)
    best.add(np.array([[1.0, 2.0, 1.0]], dtype=np.float32), ["c", "b", "a"])
    best.add(np.array([[0.5]], dtype=np.float32), ["d"], exclude=[{"d"}])
    assert best.results(["q"]) == {"q": [("b", 2.0), ("a", 1.0), ("c", 1.0)]}
    lonely = TopK(1, 5)
    lonely.add(np.array([[3.0, 1.0]], dtype=np.float32), ["x", "y"], exclude=[{"y"}])
    assert lonely.results(["q"]) == {"q": [("x", 3.0)]}  # the excluded document is not a hit


def test_search_holds_one_part_at_a_time_and_ids_only_of_parts_with_hits(monkeypatch):
    monkeypatch.setattr(TopK, "prune_every", 100)
    rng = np.random.default_rng(3)
    queries, k, part_size, parts = random_queries(rng, 3), 4, 50, 60
    references = []
    most_alive = 0

    def lazily_loaded_parts():
        nonlocal most_alive
        for part in range(parts):
            block = random_documents(rng, part_size, part * part_size)
            references.append(weakref.ref(block))
            gc.collect()
            most_alive = max(most_alive, sum(reference() is not None for reference in references))
            yield block

    best = search_blocks(queries, lazily_loaded_parts(), top_k=k)
    assert most_alive <= 2  # the part being scored, and at most the previous one awaiting collection
    assert best.arrays()[0].shape == (3, k) and best.scores.shape == (3, best.capacity)
    assert best.seen == parts * part_size
    # id lists kept: at most one per hit, plus the parts added since the last pruning
    assert len(best._blocks) <= 3 * k + 100 // part_size + 1
    assert all(len(hits) == k for hits in best.results(queries.ids).values())
