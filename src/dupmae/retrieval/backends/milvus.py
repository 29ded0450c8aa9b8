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

A search asks the engine for each query's `candidates` dense and `sparse_candidates` sparse
candidates (the query's `sparse_query_terms` largest-|weight| terms), fetches the union's stored
vectors back from the engine and re-scores them with the exact DupMAE score (`fusion="exact"`, the
default); `fusion="rrf"` returns the engine's own fusion (Milvus `hybrid_search` with `RRFRanker`):
its scores are reciprocal-rank sums, not DupMAE scores.
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


def split_signs(indices: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """One sparse vector as a non-negative Milvus dict (module docstring)."""
    vector = {}
    for term, value in zip(indices.tolist(), values.tolist()):
        if value > 0:
            vector[term] = value
        elif value < 0:
            vector[NEGATIVE + term] = -value
    return vector or {EMPTY: 1.0}


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
            rows = []
            for row in range(begin, min(begin + INSERT_BATCH, len(block.ids))):
                entity = {"pk": start + row, "doc_id": block.ids[row]}
                if block.dense is not None:
                    entity["dense"] = block.dense[row].astype(np.float32, copy=False)
                if block.sparse_indices is not None:
                    entity["sparse"] = split_signs(block.sparse_indices[row], block.sparse_values[row])
                rows.append(entity)
            self.client.insert(self.collection, rows)
        self._count = start + len(block.ids)

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
        vectors = []
        for row, columns in zip(sparse, keep):
            vector = split_signs(columns, row[columns])
            vectors.append({d: v for d, v in vector.items() if d != EMPTY} or {EMPTY: 1.0})
        return vectors

    def _fetch(self, positions: list[int]) -> DocumentBlock:
        """Stored vectors of documents `positions`, in that order."""
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
        return DocumentBlock([r["doc_id"] for r in ordered], dense, indices, values)

    def _rescore(self, queries: QueryBlock, found: list[set[int]], top_k: int) -> Hits:
        every = sorted(set().union(*found))
        self.last_candidates = float(np.mean([len(f) for f in found])) if found else 0.0
        documents = self._fetch(every)
        row_of = {p: i for i, p in enumerate(every)}
        width = max([len(f) for f in found] + [1])
        candidates = np.full((len(found), width), -1, dtype=np.int64)
        for q, positions in enumerate(found):
            candidates[q, : len(positions)] = [row_of[p] for p in sorted(positions)]
        scores = candidate_scores(queries, documents, candidates)
        take = min(top_k, width)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :take]
        scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)
        ids = [[documents.ids[r] for r, s in zip(row, row_scores) if np.isfinite(s)] for row, row_scores in zip(rows, scores)]
        positions = np.where(np.isfinite(scores), np.asarray(every + [-1], dtype=np.int64)[rows], -1)
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
