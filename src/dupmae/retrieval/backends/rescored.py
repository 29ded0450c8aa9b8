"""Candidate generators (FAISS dense, an in-process sparse inverted index) and `Rescored`, which
unions their candidates and re-scores them with the exact DupMAE score.

`SparseInverted` keeps each added block's top-k pairs as a scipy CSC matrix `[n, V]` (a column is a
term's posting list: 8 bytes per stored entry). A query keeps its `query_terms` largest-|weight|
vocabulary entries (a DupMAE query has a weight on nearly every term: SciFact's fine-tuned queries
have ~30,000 non-zeros, and all of them would cost as much as exact search's sparse half); per chunk
of queries the union of their terms' columns is sliced out and multiplied by the queries' weights,
which gives each document's exact sparse dot product over those terms, and a running top-C
(`TopK`) keeps the candidates. Signed values (`sparse_activation: none`) need nothing special here:
the products are exact whatever the signs; what changes is that dropping a query term no longer only
lowers scores (with non-negative vectors a dropped term's contribution is >= 0, so pruning can only
miss documents, never promote them). Choosing terms by |weight| keeps the largest contributions of
either sign, and every candidate is re-scored exactly anyway.
"""

from __future__ import annotations

import numpy as np

from dupmae.retrieval.approximate import build_faiss_index, candidate_scores, concatenate
from dupmae.retrieval.backends import Hits
from dupmae.retrieval.index import DocumentBlock, QueryBlock, TopK

QUERY_CHUNK = 64  # queries whose terms are sliced out of the posting lists together


def _positions_hits(positions: np.ndarray, scores: np.ndarray) -> Hits:
    return Hits(None, scores, positions)  # a generator numbers documents; `Rescored` names them


class FaissDense:
    """Dense candidates from a FAISS inner-product index (any factory string: `HNSW32`, `IVF1024,Flat`,
    `Flat`). Built at the first search (an IVF index is trained on everything added before it)."""

    def __init__(self, factory: str = "HNSW32", candidates: int = 1000, threads: int = 1) -> None:
        self.factory, self.candidates, self.threads = factory, candidates, threads
        self._pending: list[np.ndarray] = []
        self._index = None
        self._count = 0

    def add(self, block: DocumentBlock) -> None:
        if block.dense is None:
            raise ValueError("FAISS dense candidates need a dense part; this representation has none")
        if self._index is None:
            self._pending.append(block.dense)
        else:
            self._index.add(np.ascontiguousarray(block.dense, dtype=np.float32))
        self._count += len(block.ids)

    def __len__(self) -> int:
        return self._count

    def build(self) -> None:
        if self._index is None:
            self._index = build_faiss_index(np.concatenate(self._pending), self.factory, self.threads)
            self._pending = []

    def search(self, queries: QueryBlock, top_k: int) -> Hits:
        if queries.dense is None:
            raise ValueError("FAISS dense candidates need dense query vectors")
        self.build()
        import faiss

        faiss.omp_set_num_threads(self.threads)
        if hasattr(self._index, "hnsw"):  # search at least as wide as the candidate list
            self._index.hnsw.efSearch = max(self._index.hnsw.efSearch, top_k)
        scores, positions = self._index.search(np.ascontiguousarray(queries.dense, dtype=np.float32),
                                               min(top_k, self._count))
        return _positions_hits(positions.astype(np.int64), np.where(positions >= 0, scores, -np.inf))


class SparseInverted:
    """Sparse candidates from posting lists of the documents' top-k pairs (module docstring)."""

    def __init__(self, candidates: int = 1000, query_terms: int = 64) -> None:
        if query_terms < 0:
            raise ValueError(f"sparse query terms must be >= 0 (0 = all), got {query_terms}")
        self.candidates, self.query_terms = candidates, query_terms
        self._blocks: list = []  # CSC [n, V_block] per added block
        self._count = 0

    def add(self, block: DocumentBlock) -> None:
        import scipy.sparse

        if block.sparse_indices is None:
            raise ValueError("sparse candidates need a sparse part; this representation has none")
        count, k = block.sparse_indices.shape
        indices = np.ascontiguousarray(block.sparse_indices, dtype=np.int32).reshape(-1)
        width = int(indices.max()) + 1 if indices.size else 1
        rows = scipy.sparse.csr_matrix((np.asarray(block.sparse_values, dtype=np.float32).reshape(-1), indices,
                                        np.arange(0, count * k + 1, k, dtype=np.int64)), shape=(count, width))
        self._blocks.append(rows.tocsc())  # column = a term's postings
        self._count += count

    def __len__(self) -> int:
        return self._count

    def nbytes(self) -> int:
        return sum(b.data.nbytes + b.indices.nbytes + b.indptr.nbytes for b in self._blocks)

    def query_weights(self, sparse: np.ndarray) -> np.ndarray:
        """`[Q, V]` with all but each row's `query_terms` largest-|weight| entries zeroed."""
        if not self.query_terms or self.query_terms >= sparse.shape[1]:
            return sparse
        keep = np.argpartition(-np.abs(sparse), self.query_terms - 1, axis=1)[:, : self.query_terms]
        pruned = np.zeros_like(sparse)
        np.put_along_axis(pruned, keep, np.take_along_axis(sparse, keep, 1), 1)
        return pruned

    def search(self, queries: QueryBlock, top_k: int) -> Hits:
        if queries.sparse is None:
            raise ValueError("sparse candidates need sparse query vectors")
        weights = self.query_weights(np.asarray(queries.sparse, dtype=np.float32))  # [Q, V]
        scores = np.full((len(queries.ids), min(top_k, self._count)), -np.inf, dtype=np.float32)
        positions = np.full(scores.shape, -1, dtype=np.int64)
        for start in range(0, len(queries.ids), QUERY_CHUNK):
            chunk = weights[start : start + QUERY_CHUNK]  # [c, V]
            terms = np.flatnonzero(np.any(chunk != 0, axis=0))
            best, offset = TopK(len(chunk), top_k), 0
            for postings in self._blocks:
                inside = terms[terms < postings.shape[1]]
                block_scores = np.asarray(postings[:, inside] @ np.ascontiguousarray(chunk[:, inside].T))  # [n, c]
                best.add_by_document(block_scores.astype(np.float32, copy=False),
                                     range(offset, offset + postings.shape[0]))
                offset += postings.shape[0]
            chunk_scores, chunk_positions = best.arrays()
            scores[start : start + len(chunk)] = chunk_scores
            positions[start : start + len(chunk)] = chunk_positions
        return _positions_hits(positions, scores)


class Rescored:
    """Union of the generators' candidates, re-scored with the exact DupMAE score from the vectors
    kept here (all added blocks, concatenated at the first search)."""

    def __init__(self, generators: list) -> None:
        if not generators:
            raise ValueError("no candidate generator")
        self.generators = generators
        self._blocks: list[DocumentBlock] = []
        self._documents: DocumentBlock | None = None
        self.last_candidates = 0.0  # mean distinct candidates per query in the last search

    def add(self, block: DocumentBlock) -> None:
        for generator in self.generators:
            generator.add(block)
        if self._documents is not None:
            self._blocks, self._documents = [self._documents], None
        self._blocks.append(block)

    def __len__(self) -> int:
        return len(self.generators[0])

    def documents(self) -> DocumentBlock:
        if self._documents is None:
            self._documents, self._blocks = concatenate(self._blocks), []
        return self._documents

    def build(self) -> None:
        self.documents()
        for generator in self.generators:
            if hasattr(generator, "build"):
                generator.build()

    def nbytes(self) -> int:
        documents = self.documents()
        return sum(a.nbytes for a in (documents.dense, documents.sparse_indices, documents.sparse_values)
                   if a is not None)

    def search(self, queries: QueryBlock, top_k: int) -> Hits:
        documents = self.documents()
        found = [g.search(queries, max(g.candidates, top_k)).positions for g in self.generators]
        candidates = union_rows(np.concatenate(found, axis=1)) if len(found) > 1 else found[0]
        self.last_candidates = float(np.mean(np.sum(candidates >= 0, axis=1)))
        scores = candidate_scores(queries, documents, candidates)  # [Q, C], -inf where none
        take = min(top_k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :take]
        scores, positions = np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)
        positions = np.where(np.isfinite(scores), positions, -1)
        ids = [[documents.ids[p] for p in row if p >= 0] for row in positions]
        return Hits(ids, scores, positions)


def union_rows(candidates: np.ndarray) -> np.ndarray:
    """Each row's distinct non-negative entries (duplicates and gaps become -1), `[Q, C]` unchanged in shape."""
    rows = np.sort(candidates, axis=1)
    duplicate = np.zeros(rows.shape, dtype=bool)
    duplicate[:, 1:] = rows[:, 1:] == rows[:, :-1]
    rows[duplicate] = -1
    return rows
