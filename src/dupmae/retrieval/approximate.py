"""Helpers of the approximate backends (`dupmae.retrieval.backends`): concatenating blocks, building a
FAISS inner-product index from a factory string, and the exact DupMAE score of each query's candidate
documents (dense inner product + sparse dot over the document's top-k), which every backend but
`exact` re-scores its candidates with. These hold all documents' vectors in memory.
"""

from __future__ import annotations

import numpy as np

from dupmae.retrieval.index import DocumentBlock, QueryBlock


def concatenate(blocks: list[DocumentBlock]) -> DocumentBlock:
    def stack(name):
        arrays = [getattr(b, name) for b in blocks]
        return None if arrays[0] is None else np.concatenate(arrays)

    return DocumentBlock([i for b in blocks for i in b.ids], stack("dense"), stack("sparse_indices"),
                         stack("sparse_values"))


def build_faiss_index(dense: np.ndarray, factory: str, threads: int = 1, seed: int = 0):
    """A FAISS inner-product index from a factory string (trained on the vectors when it needs it)."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError("approximate dense search needs FAISS: pip install faiss-cpu") from error
    faiss.omp_set_num_threads(threads)
    try:
        index = faiss.index_factory(dense.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"FAISS cannot build index {factory!r}: {error}") from None
    vectors = np.ascontiguousarray(dense, dtype=np.float32)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def candidate_scores(queries: QueryBlock, documents: DocumentBlock, candidates: np.ndarray,
                     query_chunk: int = 16) -> np.ndarray:
    """Exact hybrid scores of each query's candidate documents: `candidates` `[Q, C]` row indices
    (-1 = none) -> `[Q, C]` scores (-inf where there is no candidate)."""
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    valid = candidates >= 0
    safe = np.where(valid, candidates, 0)
    for start in range(0, len(queries.ids), query_chunk):
        rows = slice(start, start + query_chunk)
        block = np.zeros(safe[rows].shape, dtype=np.float32)
        if queries.dense is not None:
            block += np.einsum("qd,qcd->qc", queries.dense[rows], documents.dense[safe[rows]])
        if queries.sparse is not None:
            indices = documents.sparse_indices[safe[rows]]  # [q, C, k]
            values = documents.sparse_values[safe[rows]]  # [q, C, k]
            query_values = np.take_along_axis(queries.sparse[rows][:, None, :],
                                              indices.reshape(indices.shape[0], 1, -1), axis=2)
            block += (query_values.reshape(indices.shape) * values).sum(-1)
        scores[rows] = np.where(valid[rows], block, -np.inf)
    return scores
