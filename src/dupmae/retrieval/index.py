"""Exact DupMAE hybrid scoring over encoded document blocks, with a running top-k.

Score: `dense(q) . dense(d) + sum over i in topk(d) of mu_q[i] * mu_d[i]` (DUPMAE.md §2), every
document scored (no approximation), in fp32:

- dense part: one `[Q, D] x [D, n]` matrix product (what a flat FAISS inner-product index computes),
  through oneDNN on CPU (`dupmae.platform.cpu.onednn`);
- sparse part: each document's `k` (index, value) pairs select rows of the queries' transposed
  vocabulary vectors `[V, Q]`, weighted and summed — `torch.nn.functional.embedding_bag`
  (FBGEMM's sparse-times-dense kernel on CPU). Queries go in chunks of `QUERY_CHUNK` columns: a
  `[V, 64]` table (7.8 MB for BERT's vocabulary) stays in cache far better than `[V, 300]`, and
  the kernel ran 2-3x faster that way than with all 300 queries at once (and ~10x faster than
  scipy's CSR product, which this replaced).

`TopK` keeps the best `k` hits per query across blocks — `[Q, 2k]` buffers of scores and positions,
plus the id lists of the blocks that still have a document among them — so memory does not grow
with the number of blocks; once every query has k hits, a block costs one comparison with each
query's threshold and a gather of the few entries above it (FAISS keeps heaps for the same job).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dupmae.platform.cpu.onednn import matmul_transposed

# Queries per embedding_bag table (see the module docstring).
QUERY_CHUNK = 64


@dataclass
class DocumentBlock:
    """Encoded documents. dense `[N, D]` float32 or None; sparse_indices/values `[N, k]` or None
    (indices of any integer type, e.g. int32 as `dupmae encode` writes them)."""

    ids: list[str]
    dense: np.ndarray | None
    sparse_indices: np.ndarray | None
    sparse_values: np.ndarray | None


@dataclass
class QueryBlock:
    """Encoded queries: dense `[Q, D]` or None, sparse `[Q, V]` (full vocabulary vectors) or None."""

    ids: list[str]
    dense: np.ndarray | None
    sparse: np.ndarray | None


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor if tensor.dtype is dtype else tensor.to(dtype)


class HybridScorer:
    """Exact scores of a fixed set of queries against document blocks: `scorer(block)` -> `[n, Q]`
    float32 tensor. Built once per query set (the sparse query tables are laid out here)."""

    def __init__(self, queries: QueryBlock, query_chunk: int = QUERY_CHUNK) -> None:
        self.num_queries = len(queries.ids)
        self.dense = None if queries.dense is None else _tensor(queries.dense, torch.float32)  # [Q, D]
        self.tables = []  # (first query, queries in it, [V, c] table)
        if queries.sparse is not None:
            sparse = _tensor(queries.sparse, torch.float32)  # [Q, V]
            for start in range(0, self.num_queries, query_chunk):
                rows = sparse[start : start + query_chunk]  # [c, V]
                width = rows.shape[0]
                padding = -width % 16  # rows of whole 64-byte cache lines ran ~15 % faster
                if padding:
                    rows = torch.cat([rows, rows.new_zeros(padding, rows.shape[1])])
                self.tables.append((start, width, rows.T.contiguous()))  # [V, c]

    @torch.inference_mode()
    def __call__(self, documents: DocumentBlock) -> torch.Tensor:
        """`[n, Q]` scores (documents x queries: the query matrix is the small operand oneDNN
        packs, each sparse chunk adds contiguous row pieces, and `TopK.add_by_document` filters
        this layout without a transpose)."""
        count = len(documents.ids)
        if self.dense is not None:
            scores = matmul_transposed(_tensor(documents.dense, torch.float32), self.dense)  # [n, Q]
        else:
            scores = torch.zeros(count, self.num_queries)
        if self.tables:
            indices = _tensor(documents.sparse_indices, torch.int64 if documents.sparse_indices.dtype == np.int64
                              else torch.int32)  # [n, k]
            values = _tensor(documents.sparse_values, torch.float32)  # [n, k]
            for start, width, table in self.tables:
                bag = F.embedding_bag(indices, table, per_sample_weights=values, mode="sum")  # [n, c]
                scores[:, start : start + width] += bag[:, :width]
        return scores  # [n, Q]


def block_scores(queries: QueryBlock, documents: DocumentBlock) -> np.ndarray:
    """Exact scores `[Q, N]` (float32) of one block."""
    return np.ascontiguousarray(HybridScorer(queries)(documents).numpy().T)


class TopK:
    """Running best-`k` hits per query across blocks added in order.

    Per query a buffer of `capacity` (score, global position) slots, and a threshold: the k-th
    best score as of the last compaction, below which nothing can be among the top-k. A block adds
    only its entries at or above the threshold — one comparison and a gather, no sort; a row whose
    buffer would overflow is compacted (argpartition down to k, threshold raised). The first blocks,
    or any bringing many candidates, append each row's top-k of the block by argpartition instead
    (its k-th best raises the threshold).
    Besides the buffers it keeps the id lists of the blocks that still have a document among the
    hits, never a whole score matrix. `results` orders hits by score, then document id; which of
    several documents tied at the k-th score is kept is unspecified.
    """

    prune_every = 100_000  # documents added between two prunings of the id lists (at least Q x k)

    def __init__(self, num_queries: int, k: int) -> None:
        if k < 1:
            raise ValueError(f"top-k must be >= 1, got {k}")
        self.k = k
        self.capacity = k + max(2 * k, 256)
        self.scores = np.full((num_queries, self.capacity), -np.inf, dtype=np.float32)  # [Q, capacity]
        self.positions = np.full((num_queries, self.capacity), -1, dtype=np.int64)  # [Q, capacity]
        self.fill = np.zeros(num_queries, dtype=np.int64)  # slots in use per query
        self.threshold = np.full(num_queries, -np.inf, dtype=np.float32)  # k-th best at the last compaction
        self.seen = 0  # documents added so far
        self._blocks: dict[int, list[str]] = {}  # offset of a block -> its ids, while it holds hits
        self._added_since_pruning = 0

    def add(self, scores: np.ndarray | torch.Tensor, doc_ids: list[str], exclude: list[set[str]] | None = None) -> None:
        """`scores` `[Q, n]` for documents `doc_ids` (the next `n` documents); `exclude[q]` ids are
        dropped for query q."""
        self.add_by_document(scores.T, doc_ids, exclude)

    def add_by_document(self, scores: np.ndarray | torch.Tensor, doc_ids: list[str],
                        exclude: list[set[str]] | None = None) -> None:
        """Like `add`, with `scores` laid out `[n, Q]` (as `HybridScorer` computes them)."""
        scores = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, dtype=np.float32)
        count, num_queries = scores.shape
        if count != len(doc_ids):
            raise ValueError(f"{count} score rows for {len(doc_ids)} documents")
        offset, self.seen = self.seen, self.seen + count
        if exclude is not None:
            position = {d: j for j, d in enumerate(doc_ids)}
            pairs = [(position[d], q) for q, excluded in enumerate(exclude) for d in excluded if d in position]
            if pairs:
                scores = scores.copy()
                rows, columns = zip(*pairs)
                scores[list(rows), list(columns)] = -np.inf
        if count == 0:
            return
        flat = None
        if self.fill.min() >= self.k:  # every query has k hits: filter by the thresholds
            candidates = scores >= self.threshold  # [n, Q] entries that may enter a top-k
            if np.count_nonzero(candidates) <= self.fill.size * self.k // 2:  # else (early blocks) select
                flat = np.flatnonzero(candidates)
        if flat is None:
            self._add_block_top_k(scores, offset)
        else:
            documents, queries = np.divmod(flat, num_queries)
            values = scores.reshape(-1)[flat]
            counts = np.bincount(queries, minlength=num_queries)
            overflow = np.flatnonzero(self.fill + counts > self.capacity)
            if len(overflow):
                self._compact(overflow)
                keep = values >= self.threshold[queries]
                documents, queries, values = documents[keep], queries[keep], values[keep]
                counts = np.bincount(queries, minlength=num_queries)
            if np.any(self.fill + counts > self.capacity):
                self._add_block_top_k(scores, offset)
            elif len(values):
                order = np.argsort(queries.astype(np.int16 if num_queries < 2**15 else np.int64), kind="stable")  # radix
                queries, documents, values = queries[order], documents[order], values[order]
                first_of_query = np.cumsum(counts) - counts  # [Q]
                slots = self.fill[queries] + np.arange(len(queries)) - first_of_query[queries]
                self.scores[queries, slots] = values
                self.positions[queries, slots] = documents + offset
                self.fill += counts
            else:
                return
        self._blocks[offset] = list(doc_ids)
        self._added_since_pruning += count
        if self._added_since_pruning >= max(len(self.fill) * self.k, self.prune_every):  # ids: O(Q x k), not O(N)
            self._prune()

    def _add_block_top_k(self, scores: np.ndarray, offset: int) -> None:
        """Append each query's top-k of this block `[n, Q]`; the block's own k-th best is a lower
        bound of the final k-th best, so it raises the threshold without a compaction."""
        take = min(self.k, scores.shape[0])
        self._compact(np.flatnonzero(self.fill + take > self.capacity))  # room for `take` more
        by_query = np.ascontiguousarray(scores.T)  # [Q, n]
        columns = _top_columns(by_query, take)  # [Q, take]
        values = np.take_along_axis(by_query, columns, 1)
        first = int(self.fill[0])
        if np.all(self.fill == first):  # the usual case: one slice, no fancy indexing
            self.scores[:, first : first + take] = values
            self.positions[:, first : first + take] = columns + offset
        else:
            slots = self.fill[:, None] + np.arange(take)
            rows = np.arange(len(self.fill))[:, None]
            self.scores[rows, slots] = values
            self.positions[rows, slots] = columns + offset
        self.fill += take
        if take == self.k:
            np.maximum(self.threshold, values.min(axis=1), out=self.threshold)

    def _compact(self, rows: np.ndarray) -> None:
        """Keep the best k entries of the buffers `rows`; their threshold becomes their k-th best."""
        rows = rows[self.fill[rows] >= self.k]
        if not len(rows):
            return
        keep = _top_columns(self.scores[rows], self.k)  # [r, k]; empty slots are -inf, never above
        kept_scores = np.take_along_axis(self.scores[rows], keep, 1)
        kept_positions = np.take_along_axis(self.positions[rows], keep, 1)
        self.scores[rows] = -np.inf
        self.positions[rows] = -1
        self.scores[rows, : self.k] = kept_scores
        self.positions[rows, : self.k] = kept_positions
        self.fill[rows] = self.k
        self.threshold[rows] = np.maximum(self.threshold[rows], kept_scores.min(axis=1))

    def _prune(self) -> None:
        """Forget the id lists of blocks none of whose documents is among the hits any more."""
        self._compact(np.flatnonzero(self.fill > self.k))
        offsets = np.array(sorted(self._blocks), dtype=np.int64)
        held = self.positions[self.positions >= 0]
        used = np.unique(np.searchsorted(offsets, held, side="right") - 1)
        self._blocks = {int(offsets[i]): self._blocks[int(offsets[i])] for i in used}
        self._added_since_pruning = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global positions), each `[Q, min(k, documents seen)]`, best first (-inf / -1
        where a query has fewer hits)."""
        self._compact(np.flatnonzero(self.fill > self.k))
        width = min(self.k, self.seen)
        order = np.argsort(-self.scores[:, : self.k], axis=1)[:, :width]  # ties: `results` orders them by id
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.positions, order, 1)

    def results(self, query_ids: list[str]) -> dict[str, list[tuple[str, float]]]:
        """{query id: [(doc id, score), ...]} best first, ties by document id; -inf hits left out."""
        scores, positions = self.arrays()
        offsets = np.array(sorted(self._blocks), dtype=np.int64)
        out = {}
        for q, query_id in enumerate(query_ids):
            finite = np.isfinite(scores[q])
            block = offsets[np.searchsorted(offsets, positions[q][finite], side="right") - 1]
            hits = [(self._blocks[int(b)][int(p - b)], float(s))
                    for b, p, s in zip(block, positions[q][finite], scores[q][finite])]
            out[query_id] = sorted(hits, key=lambda hit: (-hit[1], hit[0]))
        return out


def _top_columns(scores: np.ndarray, take: int) -> np.ndarray:
    """Column indices `[Q, take]` of each row's `take` largest values, in no particular order.
    (numpy's introselect beat torch.topk 2-5x on CPU unless `take` is tiny.)"""
    width = scores.shape[1]
    if take >= width:
        return np.broadcast_to(np.arange(width), scores.shape).copy()
    if take <= 16:
        return torch.from_numpy(scores).topk(take, dim=1, sorted=False).indices.numpy()
    return np.argpartition(scores, width - take, axis=1)[:, width - take :]
