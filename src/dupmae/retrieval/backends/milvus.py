"""The Milvus backend: dense and sparse vectors of every document in one Milvus collection.

    MilvusBackend("runs/scifact.db")                  # embedded Milvus Lite (the milvus-lite package)
    MilvusBackend("http://milvus.internal:19530")     # a Milvus server or cluster: the same code path

One collection holds, per document: `pk` (its position, INT64 primary key), `doc_id` (VARCHAR), `dense`
(FLOAT_VECTOR, HNSW index, inner product) and `sparse` (SPARSE_FLOAT_VECTOR, SPARSE_INVERTED_INDEX,
inner product), each only if the representation has that part. The collection's properties hold
dupmae's manifest (representation settings, document count), so a search can refuse a collection
encoded by another model or not completely loaded.

Milvus accepts only non-negative, finite sparse weights and at least one non-zero per vector, while
DupMAE's raw-logit activation (`sparse_activation: none`) gives signed values. Sparse vectors are
therefore stored *sign-split*: weight `w` of term `t` goes to dimension `t` if `w > 0` and `-w` to
dimension `NEGATIVE + t` if `w < 0` (lossless: the document's top-k pairs are rebuilt from it), and a
document with no non-zero weight gets one entry at `EMPTY` (no query has it). A query is split the
same way, `[q+, q-]`, so the engine's sparse score is `q+·d+ + q-·d-`: the positive-sign terms of
the exact sparse dot (an upper bound of it), what the engine ranks sparse candidates by. With
`relu` / `log1p_relu` there are no negative weights and the split changes nothing.

Documents are inserted with their sparse vectors as one-row scipy CSR matrices (`sign_split_matrix`):
pymilvus packs those without the per-element type checks it runs on dict rows (about half the
client time per row here), and the stored values are the same float32 weights at the same dimensions.

A search asks the engine for each query's `candidates` dense and `sparse_candidates` sparse
candidates (the query's `sparse_query_terms` largest-|weight| terms) and re-scores the union with the
exact DupMAE score (`fusion="exact"`, the default). The candidates' vectors come from the local index
when one was given (`use_local`: `dupmae search --backend milvus --index DIR`), else they are
fetched back from the engine by key (`client.query`, ~1 ms per document through pymilvus). Both
paths hand the scorer the same arrays (`canonical_pairs`), so their hits and scores are identical.
`fusion="rrf"` returns the engine's own fusion (Milvus `hybrid_search` with `RRFRanker`): its scores
are reciprocal-rank sums, not DupMAE scores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dupmae.retrieval.approximate import candidate_scores
from dupmae.retrieval.backends import Hits
from dupmae.retrieval.index import DocumentBlock, QueryBlock

NEGATIVE = 1 << 30  # sparse dimension of term t's negative weight: NEGATIVE + t
EMPTY = 1 << 31  # the one dimension of a document without non-zero sparse weights
MANIFEST_PROPERTY = "dupmae.manifest"
INSERT_BATCH = 2_000  # rows per insert call (gRPC messages stay well under Milvus's 64 MB limit)
FETCH_BATCH = 2_000  # primary keys per query call
QUERY_BATCH = 64  # queries per search call
MAX_LIMIT = 16_384  # Milvus's largest top-k
CANONICAL_CHUNK = 16_384  # documents put in canonical order at a time by `use_local`
FUSIONS = ("exact", "rrf")


def check_uri(uri: str) -> str:
    """A Milvus URI: `http(s)://host:port` (a server) or a local file ending in `.db` (Milvus Lite)."""
    if uri.startswith(("http://", "https://", "tcp://")):
        rest = uri.split("://", 1)[1]
        if not rest or rest.startswith(("/", ":")):
            raise ValueError(f"--uri {uri!r}: no host; a server URI looks like http://localhost:19530")
        return uri
    if "://" in uri:
        raise ValueError(f"--uri {uri!r}: unknown scheme; use http://host:19530 (a Milvus server) or a local "
                         "file ending in .db (embedded Milvus Lite)")
    if not uri.endswith(".db"):
        raise ValueError(f"--uri {uri!r}: a local Milvus Lite database must end in .db (or give http://host:19530 "
                         "for a Milvus server)")
    if not Path(uri).resolve().parent.is_dir():
        raise ValueError(f"--uri {uri!r}: folder {Path(uri).resolve().parent} does not exist")
    return uri


def connect(uri: str):
    """A `MilvusClient` for `uri` (a token for a secured server comes from $MILVUS_TOKEN)."""
    check_uri(uri)
    try:
        from pymilvus import MilvusClient
    except ImportError as error:
        raise ImportError("the milvus backend needs pymilvus (and milvus-lite for a local .db): "
                          "pip install 'dupmae[milvus]'") from error
    try:
        if "://" in uri:
            return MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""), timeout=30)
        return MilvusClient(uri)
    except Exception as error:  # pymilvus raises MilvusException and its subclasses
        raise ValueError(f"cannot connect to Milvus at {uri!r}: {error}") from None


def sign_split_matrix(indices: np.ndarray, values: np.ndarray):
    """Sign-split sparse vectors of `n` documents, top-k pairs `indices` / `values` `[n, k]`, as one
    scipy CSR matrix `[n, EMPTY + 1]` float32 with sorted column indices (module docstring): row `r`
    holds `values[r]`'s positive weights at `indices[r]`, its negative ones negated at
    `NEGATIVE + indices[r]` (duplicate dimensions summed), or 1 at `EMPTY` if none is non-zero. A row of
    it (`matrix[r]`) is what `add` hands pymilvus; `sign_split_dicts` gives queries the same rows."""
    import scipy.sparse

    indices, values = np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float32)
    if indices.shape != values.shape or indices.ndim != 2:
        raise ValueError(f"sparse indices {indices.shape} and values {values.shape} must both be [n, k]")
    count = len(indices)
    kept = (values > 0) | (values < 0)  # NaN and 0 dropped
    empty = np.flatnonzero(~kept.any(axis=1))
    rows = np.concatenate([np.nonzero(kept)[0], empty])
    columns = np.concatenate([np.where(values > 0, indices, NEGATIVE + indices)[kept],
                              np.full(len(empty), EMPTY, dtype=np.int64)])
    weights = np.concatenate([np.abs(values[kept]), np.ones(len(empty), dtype=np.float32)])
    matrix = scipy.sparse.csr_matrix((weights, (rows, columns)), shape=(count, EMPTY + 1), dtype=np.float32)
    matrix.sum_duplicates()  # canonical: sorted indices, each dimension once
    return matrix


def sign_split_dicts(indices: np.ndarray, values: np.ndarray) -> list[dict[int, float]]:
    """The rows of `sign_split_matrix(indices, values)` as `{dimension: weight}` dicts, the form
    pymilvus takes for search vectors."""
    matrix = sign_split_matrix(indices, values)
    return [dict(zip(matrix.indices[begin:end].tolist(), matrix.data[begin:end].tolist()))
            for begin, end in zip(matrix.indptr[:-1], matrix.indptr[1:])]


def canonical_pairs(indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sparse pairs `[m, k]` as the engine gives them back: per row the non-zero weights only, in
    `join_signs` order of the stored vector (positive weights by term, then negative ones by term),
    zero-padded to `w = max(1, most non-zeros in a row)`; returns (indices `[m, w]` int64, values
    `[m, w]` float32). Scoring these instead of the raw pairs makes local and fetched re-scoring sum
    the same products in the same order."""
    indices, values = np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float32)
    kept = (values > 0) | (values < 0)
    keys = np.where(values > 0, indices, np.where(kept, NEGATIVE + indices, EMPTY))
    order = np.argsort(keys, axis=1, kind="stable")
    width = max(int(kept.sum(axis=1).max(initial=0)), 1)
    order = order[:, :width]
    kept = np.take_along_axis(kept, order, 1)
    return (np.where(kept, np.take_along_axis(indices, order, 1), 0),
            np.where(kept, np.take_along_axis(values, order, 1), 0).astype(np.float32))


def canonical_block(documents: DocumentBlock) -> tuple[DocumentBlock, np.ndarray]:
    """`documents` with its sparse pairs `[N, k]` in `canonical_pairs` order (chunk by chunk; indices
    keep their dtype, width `max(1, most non-zeros)`) and each document's non-zero count `[N]`: rows
    of it cut to a candidate set's widest count equal `canonical_pairs` of that set's raw pairs."""
    if documents.sparse_indices is None:
        return documents, np.zeros(len(documents.ids), dtype=np.int64)
    nonzeros = np.count_nonzero((documents.sparse_values > 0) | (documents.sparse_values < 0), axis=1)
    width = max(int(nonzeros.max(initial=0)), 1)
    indices = np.zeros((len(documents.ids), width), dtype=documents.sparse_indices.dtype)
    values = np.zeros((len(documents.ids), width), dtype=np.float32)
    for start in range(0, len(documents.ids), CANONICAL_CHUNK):
        rows = slice(start, start + CANONICAL_CHUNK)
        chunk_indices, chunk_values = canonical_pairs(documents.sparse_indices[rows], documents.sparse_values[rows])
        indices[rows, : chunk_indices.shape[1]], values[rows, : chunk_values.shape[1]] = chunk_indices, chunk_values
    return DocumentBlock(documents.ids, documents.dense, indices, values), nonzeros


def join_signs(vector: dict[int, float]) -> tuple[list[int], list[float]]:
    """(terms, signed weights) of a sign-split vector."""
    terms, weights = [], []
    for dimension, value in vector.items():
        dimension = int(dimension)
        if dimension < NEGATIVE:
            terms.append(dimension), weights.append(float(value))
        elif dimension < EMPTY:
            terms.append(dimension - NEGATIVE), weights.append(-float(value))
    return terms, weights


class MilvusBackend:
    """See the module docstring. `create(manifest)` before the first `add` of a new collection."""

    def __init__(self, uri: str, collection: str = "dupmae", candidates: int = 1000,
                 sparse_candidates: int | None = None, sparse_query_terms: int = 64, fusion: str = "exact",
                 hnsw_m: int = 32, ef_construction: int = 200) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        self.uri, self.collection = uri, collection
        self.candidates, self.sparse_candidates = candidates, sparse_candidates or candidates
        self.sparse_query_terms, self.fusion = sparse_query_terms, fusion
        self.hnsw_m, self.ef_construction = hnsw_m, ef_construction
        self.client = connect(uri)
        self._fields: set[str] | None = None
        self._count: int | None = None
        self._local: DocumentBlock | None = None  # canonical sparse order (`canonical_block`)
        self._local_nonzeros: np.ndarray | None = None  # [N] non-zero sparse weights per document
        self.last_candidates = 0.0

    # --- collection -----------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.client.has_collection(self.collection)

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.collection)
        self._fields, self._count = None, None

    def create(self, manifest: dict, dense_dim: int | None, sparse: bool) -> None:
        """A new collection for documents with a dense part of `dense_dim` (None: none) and/or a sparse part."""
        from pymilvus import DataType

        if self.exists():
            raise ValueError(f"Milvus collection {self.collection!r} already exists at {self.uri}; "
                             "drop it first (dupmae index --replace) or choose another --collection")
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
        index_params = self.client.prepare_index_params()
        if dense_dim:
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=int(dense_dim))
            index_params.add_index("dense", index_type="HNSW", metric_type="IP",
                                   params={"M": self.hnsw_m, "efConstruction": self.ef_construction})
        if sparse:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            index_params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=index_params)
        self.client.alter_collection_properties(self.collection,
                                                properties={MANIFEST_PROPERTY: json.dumps(manifest)})
        self._fields, self._count = None, 0

    def manifest(self) -> dict:
        """The dupmae manifest stored with the collection (ValueError if there is no such collection)."""
        if not self.exists():
            raise ValueError(f"no Milvus collection {self.collection!r} at {self.uri}; load one with "
                             "`dupmae index --backend milvus`")
        properties = self.client.describe_collection(self.collection).get("properties") or {}
        if MANIFEST_PROPERTY not in properties:
            raise ValueError(f"Milvus collection {self.collection!r} at {self.uri} was not written by `dupmae index`")
        return json.loads(properties[MANIFEST_PROPERTY])

    def fields(self) -> set[str]:
        if self._fields is None:
            self._fields = {f["name"] for f in self.client.describe_collection(self.collection)["fields"]}
        return self._fields

    def __len__(self) -> int:
        if self._count is None:
            self.client.load_collection(self.collection)
            self._count = int(self.client.query(self.collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
        return self._count

    # --- the protocol ---------------------------------------------------------------------------

    def add(self, block: DocumentBlock) -> None:
        fields, start = self.fields(), len(self)
        for name, present in (("dense", block.dense is not None), ("sparse", block.sparse_indices is not None)):
            if present != (name in fields):
                raise ValueError(f"Milvus collection {self.collection!r} {'has no' if present else 'needs a'} "
                                 f"{name} field for these documents")
        for begin in range(0, len(block.ids), INSERT_BATCH):
            end = min(begin + INSERT_BATCH, len(block.ids))
            self.client.insert(self.collection, self._rows(block, begin, end, start))
        self._count = start + len(block.ids)

    def use_local(self, documents: DocumentBlock) -> None:
        """Re-score candidates from `documents` (row `p` = the document stored under key `p`, as
        `dupmae index` numbers an index's parts in order) instead of fetching their vectors from the
        engine. ValueError if the count or a sample of stored doc ids disagree with the collection.
        Holds a copy of the sparse pairs in canonical order (`canonical_block`), not `documents`."""
        if len(documents.ids) != len(self):
            raise ValueError(f"the local vectors hold {len(documents.ids)} documents but Milvus collection "
                             f"{self.collection!r} holds {len(self)}")
        fields = self.fields()
        for name, array in (("dense", documents.dense), ("sparse", documents.sparse_indices)):
            if (array is not None) != (name in fields):
                raise ValueError(f"the local vectors {'have' if array is not None else 'lack'} a {name} part but "
                                 f"Milvus collection {self.collection!r} {'does not' if array is not None else 'does'}")
        sample = sorted({0, len(documents.ids) // 2, len(documents.ids) - 1}) if documents.ids else []
        stored = {int(r["pk"]): r["doc_id"] for r in
                  self.client.query(self.collection, filter=f"pk in {sample}", output_fields=["doc_id"])}
        for position in sample:
            if stored.get(position) != documents.ids[position]:
                raise ValueError(f"document {position} is {documents.ids[position]!r} locally but "
                                 f"{stored.get(position)!r} in Milvus collection {self.collection!r}: "
                                 "not the index that was loaded into it")
        self._local, self._local_nonzeros = canonical_block(documents)

    def finish(self) -> None:
        """Flush inserted rows to storage (a search sees them either way)."""
        self.client.flush(self.collection)

    def search(self, queries: QueryBlock, top_k: int) -> Hits:
        fields = self.fields()
        self.client.load_collection(self.collection)
        dense_requests = self._dense_queries(queries) if "dense" in fields else None
        sparse_requests = self._sparse_queries(queries) if "sparse" in fields else None
        if self.fusion == "rrf":
            return self._engine_fusion(queries, dense_requests, sparse_requests, top_k)
        found: list[set[int]] = [set() for _ in queries.ids]
        for field, requests, count in (("dense", dense_requests, self.candidates),
                                       ("sparse", sparse_requests, self.sparse_candidates)):
            if requests is None:
                continue
            limit = min(max(count, top_k), MAX_LIMIT)
            for start in range(0, len(requests), QUERY_BATCH):
                # Only the key: without output_fields Milvus Lite returns every field, vectors included
                # (300 MB for 64 queries x 1,000 hits of SciFact, over gRPC's 256 MB limit).
                answer = self.client.search(self.collection, data=requests[start : start + QUERY_BATCH],
                                            anns_field=field, limit=limit, search_params=self._params(field, limit),
                                            output_fields=["pk"])
                for q, hits in enumerate(answer, start):
                    found[q].update(int(hit["pk"]) for hit in hits)
        return self._rescore(queries, found, top_k)

    # --- helpers --------------------------------------------------------------------------------

    def _rows(self, block: DocumentBlock, begin: int, end: int, first_key: int) -> list[dict]:
        """Insert rows of documents `begin:end` of `block`, keys from `first_key + begin`."""
        dense = None if block.dense is None else np.asarray(block.dense[begin:end], dtype=np.float32)
        sparse = None if block.sparse_indices is None else \
            sign_split_matrix(block.sparse_indices[begin:end], block.sparse_values[begin:end])
        rows = []
        for row in range(end - begin):
            entity = {"pk": first_key + begin + row, "doc_id": block.ids[begin + row]}
            if dense is not None:
                entity["dense"] = dense[row]
            if sparse is not None:
                entity["sparse"] = sparse[row]  # a [1, EMPTY + 1] CSR row
            rows.append(entity)
        return rows

    def _params(self, field: str, limit: int) -> dict:
        if field == "dense":
            return {"metric_type": "IP", "params": {"ef": max(limit, 64)}}
        return {"metric_type": "IP"}

    def _dense_queries(self, queries: QueryBlock) -> list:
        if queries.dense is None:
            raise ValueError("the collection has dense vectors but the queries have none")
        return [row for row in np.asarray(queries.dense, dtype=np.float32)]

    def _sparse_queries(self, queries: QueryBlock) -> list[dict[int, float]]:
        if queries.sparse is None:
            raise ValueError("the collection has sparse vectors but the queries have none")
        sparse = np.asarray(queries.sparse, dtype=np.float32)
        width = sparse.shape[1]
        terms = self.sparse_query_terms if 0 < self.sparse_query_terms < width else width
        keep = np.argpartition(-np.abs(sparse), terms - 1, axis=1)[:, :terms] if terms < width else \
            np.broadcast_to(np.arange(width), sparse.shape)
        return sign_split_dicts(keep, np.take_along_axis(sparse, keep, axis=1))

    def _candidates(self, positions: np.ndarray) -> DocumentBlock:
        """Vectors of documents `positions` `[m]` (keys), in that order, sparse pairs canonical: from the
        local index if `use_local` gave one, else fetched from the engine."""
        if self._local is None:
            return self._fetch(positions.tolist())
        local = self._local
        dense = None if local.dense is None else np.asarray(local.dense[positions], dtype=np.float32)
        indices = values = None
        if local.sparse_indices is not None:  # canonical already: cut to the candidates' widest row
            width = max(int(self._local_nonzeros[positions].max(initial=0)), 1)
            indices, values = local.sparse_indices[positions, :width], local.sparse_values[positions, :width]
        return DocumentBlock([local.ids[p] for p in positions], dense, indices, values)

    def _fetch(self, positions: list[int]) -> DocumentBlock:
        """Stored vectors of documents `positions`, in that order, sparse pairs canonical."""
        fields = [f for f in ("dense", "sparse") if f in self.fields()]
        rows = {}
        for start in range(0, len(positions), FETCH_BATCH):
            batch = positions[start : start + FETCH_BATCH]
            for row in self.client.query(self.collection, filter=f"pk in {batch}", output_fields=["doc_id", *fields]):
                rows[int(row["pk"])] = row
        missing = [p for p in positions if p not in rows]
        if missing:
            raise ValueError(f"Milvus collection {self.collection!r} lost documents {missing[:5]} between search and fetch")
        ordered = [rows[p] for p in positions]
        dense = np.asarray([r["dense"] for r in ordered], dtype=np.float32) if "dense" in fields else None
        indices = values = None
        if "sparse" in fields:
            pairs = [join_signs(r["sparse"]) for r in ordered]
            width = max([len(t) for t, _ in pairs] + [1])
            indices = np.zeros((len(pairs), width), dtype=np.int64)
            values = np.zeros((len(pairs), width), dtype=np.float32)
            for row, (terms, weights) in enumerate(pairs):
                indices[row, : len(terms)], values[row, : len(terms)] = terms, weights
            indices, values = canonical_pairs(indices, values)
        return DocumentBlock([r["doc_id"] for r in ordered], dense, indices, values)

    def _rescore(self, queries: QueryBlock, found: list[set[int]], top_k: int) -> Hits:
        """Exact scores of each query's candidates `found[q]` (keys); the best `top_k` per query."""
        every = np.asarray(sorted(set().union(*found)), dtype=np.int64)  # [m] distinct candidates
        self.last_candidates = float(np.mean([len(f) for f in found])) if found else 0.0
        documents = self._candidates(every)  # row i = document every[i]
        width = max([len(f) for f in found] + [1])
        candidates = np.full((len(found), width), -1, dtype=np.int64)  # [Q, C] rows of `documents`
        for q, positions in enumerate(found):
            candidates[q, : len(positions)] = np.searchsorted(every, sorted(positions))
        scores = candidate_scores(queries, documents, candidates)
        take = min(top_k, width)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :take]
        scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)
        ids = [[documents.ids[r] for r, s in zip(row, row_scores) if np.isfinite(s)] for row, row_scores in zip(rows, scores)]
        positions = np.where(np.isfinite(scores), np.append(every, -1)[rows], -1)
        return Hits(ids, scores, positions)

    def _engine_fusion(self, queries, dense_requests, sparse_requests, top_k) -> Hits:
        from pymilvus import AnnSearchRequest, RRFRanker

        limit = min(max(self.candidates, top_k), MAX_LIMIT)
        ids, scores, positions = [], np.full((len(queries.ids), min(top_k, MAX_LIMIT)), -np.inf, np.float32), None
        positions = np.full(scores.shape, -1, dtype=np.int64)
        for start in range(0, len(queries.ids), QUERY_BATCH):
            stop = min(start + QUERY_BATCH, len(queries.ids))
            requests = [AnnSearchRequest(r[start:stop], field, self._params(field, limit), limit)
                        for field, r in (("dense", dense_requests), ("sparse", sparse_requests)) if r is not None]
            answer = self.client.hybrid_search(self.collection, requests, RRFRanker(60), limit=min(top_k, MAX_LIMIT),
                                               output_fields=["doc_id"])
            for q, hits in enumerate(answer, start):
                ids.append([hit["entity"]["doc_id"] for hit in hits])
                scores[q, : len(hits)] = [hit["distance"] for hit in hits]
                positions[q, : len(hits)] = [int(hit["pk"]) for hit in hits]
        return Hits(ids, scores, positions)
