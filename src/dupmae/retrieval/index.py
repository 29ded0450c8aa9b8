"""Exact DupMAE hybrid scoring over encoded document shards, with a running top-k.

Score: `dense(q) . dense(d) + sum over i in topk(d) of mu_q[i] * mu_d[i]` (DUPMAE.md §2). The dense
part is a matrix product (what a flat FAISS inner-product index computes); the sparse part multiplies
the documents' (index, value) pairs, held as a CSR matrix, by the queries' full vocabulary vectors.
Only the best `top_k` hits per query are ever kept, whatever the number of shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch


@dataclass
class DocumentBlock:
    """Encoded documents. dense `[N, D]` float32 or None; sparse_indices/values `[N, k]` or None."""

    ids: list[str]
    dense: np.ndarray | None
    sparse_indices: np.ndarray | None
    sparse_values: np.ndarray | None

    def sparse_matrix(self, vocab_size: int) -> scipy.sparse.csr_matrix:
        """`[N, V]` CSR with each document's kept entries."""
        rows, k = self.sparse_indices.shape
        indptr = np.arange(0, rows * k + 1, k, dtype=np.int64)
        return scipy.sparse.csr_matrix(
            (self.sparse_values.reshape(-1), self.sparse_indices.reshape(-1).astype(np.int64), indptr),
            shape=(rows, vocab_size),
        )


@dataclass
class QueryBlock:
    """Encoded queries: dense `[Q, D]` or None, sparse `[Q, V]` (full vocabulary vectors) or None."""

    ids: list[str]
    dense: np.ndarray | None
    sparse: np.ndarray | None


def block_scores(queries: QueryBlock, documents: DocumentBlock) -> np.ndarray:
    """Exact scores `[Q, N]` (float32)."""
    total = np.zeros((len(queries.ids), len(documents.ids)), dtype=np.float32)
    if queries.dense is not None:
        total += queries.dense @ documents.dense.T
    if queries.sparse is not None:
        sparse = documents.sparse_matrix(queries.sparse.shape[1])  # [N, V]
        total += np.asarray(sparse @ queries.sparse.T, dtype=np.float32).T  # [Q, N]
    return total


class TopK:
    """Running best-`k` hits per query across blocks; ties resolved by document id (ascending)."""

    def __init__(self, num_queries: int, k: int) -> None:
        self.k = k
        self.scores = np.full((num_queries, 0), -np.inf, dtype=np.float32)
        self.doc_ids = np.empty((num_queries, 0), dtype=object)

    def add(self, scores: np.ndarray, doc_ids: list[str], exclude: list[set[str]] | None = None) -> None:
        """`scores` `[Q, N]` for documents `doc_ids`; `exclude[q]` ids are dropped for query q."""
        ids = np.asarray(doc_ids, dtype=object)
        if exclude is not None:
            scores = scores.copy()
            position = {d: j for j, d in enumerate(doc_ids)}
            for q, excluded in enumerate(exclude):
                for d in excluded:
                    if d in position:
                        scores[q, position[d]] = -np.inf
        keep = min(self.k, scores.shape[1])
        best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep] if keep < scores.shape[1] else \
            np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
        merged_scores = np.concatenate([self.scores, np.take_along_axis(scores, best, 1)], axis=1)
        merged_ids = np.concatenate([self.doc_ids, ids[best]], axis=1)
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(merged_scores, order, 1)
        self.doc_ids = np.take_along_axis(merged_ids, order, 1)

    def results(self, query_ids: list[str]) -> dict[str, list[tuple[str, float]]]:
        out = {}
        for q, query_id in enumerate(query_ids):
            hits = [(str(d), float(s)) for d, s in zip(self.doc_ids[q], self.scores[q]) if np.isfinite(s)]
            out[query_id] = sorted(hits, key=lambda hit: (-hit[1], hit[0]))
        return out
