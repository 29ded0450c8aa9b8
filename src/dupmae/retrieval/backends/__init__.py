"""Search backends: one small protocol, several implementations behind it.

    backend.add(block)                      # DocumentBlock: ids + dense [n, D] + sparse top-k pairs
    hits = backend.search(queries, top_k)   # QueryBlock -> Hits: ids and scores [Q, top_k], best first

| name | what scores the documents | candidates |
| --- | --- | --- |
| `exact` | the exact DupMAE score of every document (`HybridScorer` + `TopK`) | all |
| `faiss` | FAISS dense candidates, re-scored exactly | dense only |
| `sparse` | in-process inverted index candidates, re-scored exactly | sparse only |
| `union` | FAISS dense ∪ inverted-index sparse candidates, re-scored exactly | both |
| `milvus` | Milvus (embedded Milvus Lite or a server) dense ∪ sparse candidates, re-scored exactly (or the engine's fusion) | both |

A candidate generator (`FaissDense`, `SparseInverted`) answers the same protocol with its own
partial score (dense dot, sparse dot); `Rescored` unions the candidates of its generators and
re-scores them with the exact score from the vectors it keeps. Documents are numbered in the order
they were added (a hit's `position`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from dupmae.retrieval.index import DocumentBlock, QueryBlock


@dataclass
class Hits:
    """Per query, hits best first: `ids[q]` document ids (None from a candidate generator, which
    numbers documents only), `scores` `[Q, C]` float32 (-inf past the
    hits a query has), `positions` `[Q, C]` int64 addition order (-1 past them, or where the backend
    does not number documents)."""

    ids: list[list[str]] | None
    scores: np.ndarray
    positions: np.ndarray

    def results(self, query_ids: list[str], top_k: int | None = None,
                exclude_self: bool = False) -> dict[str, list[tuple[str, float]]]:
        """{query id: [(doc id, score), ...]} best first, ties by document id."""
        out = {}
        for q, query_id in enumerate(query_ids):
            hits = [(d, float(s)) for d, s in zip(self.ids[q], self.scores[q]) if np.isfinite(s)
                    and not (exclude_self and d == query_id)]
            out[query_id] = sorted(hits, key=lambda hit: (-hit[1], hit[0]))[:top_k]
        return out

    @classmethod
    def from_results(cls, query_ids: list[str], results: dict[str, list[tuple[str, float]]]) -> "Hits":
        width = max((len(results[q]) for q in query_ids), default=0)
        scores = np.full((len(query_ids), width), -np.inf, dtype=np.float32)
        for q, query_id in enumerate(query_ids):
            scores[q, : len(results[query_id])] = [s for _, s in results[query_id]]
        return cls([[d for d, _ in results[q]] for q in query_ids], scores,
                   np.full(scores.shape, -1, dtype=np.int64))


@runtime_checkable
class Backend(Protocol):
    """Where documents go and candidates come from."""

    def add(self, block: DocumentBlock) -> None:
        """Add the next documents (numbered after those added before)."""

    def search(self, queries: QueryBlock, top_k: int) -> Hits:
        """The best `top_k` documents per query by this backend's score."""

    def __len__(self) -> int:
        """Documents added so far."""


NAMES = ("exact", "faiss", "sparse", "union", "milvus")


def make_backend(name: str, *, uri: str | None = None, dense_index: str = "HNSW32", candidates: int = 1000,
                 sparse_candidates: int | None = None, sparse_query_terms: int = 64, threads: int = 1,
                 fusion: str = "exact", collection: str | None = None, dense: bool = True,
                 sparse: bool = True) -> Backend:
    """A backend by name (see the module docstring). `candidates` / `sparse_candidates`: per query from
    the dense / sparse side; `sparse_query_terms`: a query's largest-|weight| vocabulary entries used to
    find sparse candidates (0 = all: exact sparse dot products, as costly as exact search's sparse half);
    `dense` / `sparse`: whether the documents have that part (`union` uses the generators that apply)."""
    from dupmae.retrieval.backends.exact import ExactBackend

    sparse_candidates = sparse_candidates or candidates
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name != "milvus" and uri is not None:
        raise ValueError(f"--uri is for an engine backend (milvus), not {name!r}")
    if name == "exact":
        return ExactBackend()
    if name == "milvus":
        from dupmae.retrieval.backends.milvus import MilvusBackend

        if uri is None:
            raise ValueError("the milvus backend needs --uri: a file ending in .db (embedded Milvus Lite) or "
                             "http://host:19530 (a Milvus server)")
        return MilvusBackend(uri, collection=collection or "dupmae", candidates=candidates,
                             sparse_candidates=sparse_candidates, sparse_query_terms=sparse_query_terms,
                             fusion=fusion)
    from dupmae.retrieval.backends.rescored import FaissDense, Rescored, SparseInverted

    for needed, present in (("faiss", dense), ("sparse", sparse)):
        if name == needed and not present:
            raise ValueError(f"the {name} backend needs a {'dense' if name == 'faiss' else 'sparse'} part; "
                             "this representation has none")
    generators = []
    if name in ("faiss", "union") and dense:
        generators.append(FaissDense(dense_index, candidates, threads))
    if name in ("sparse", "union") and sparse:
        generators.append(SparseInverted(sparse_candidates, sparse_query_terms))
    return Rescored(generators)
