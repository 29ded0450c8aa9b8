"""`dupmae index`: load an encoded dupmae index into a search engine collection (dense + sparse vectors).

    dupmae index --backend milvus --uri runs/scifact.db --index runs/scifact/index        # embedded Milvus Lite
    dupmae index --backend milvus --uri http://milvus.internal:19530 --index INDEX      # a Milvus server

The collection records the index's manifest (model, representation settings, document count), so
`dupmae search --backend milvus --uri URI` refuses a collection of another model or an unfinished
load. A rerun into an existing collection of the same index resumes after the documents it holds;
`--replace` drops and rewrites it. In-process backends (exact, faiss, sparse, union) are built by
`dupmae search` itself from the index folder: nothing to load.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dupmae.retrieval.encode import INDEX_MANIFEST, index_parts, load_part, read_manifest

logger = logging.getLogger(__name__)
ENGINES = ("milvus",)


def load_into_engine(index: str | Path, backend: str, uri: str, collection: str = "dupmae", replace: bool = False,
                     hnsw_m: int = 32, ef_construction: int = 200) -> int:
    """Add every part of `index` to the engine's collection; returns the documents added now."""
    if backend not in ENGINES:
        from dupmae.retrieval.backends import NAMES

        if backend in NAMES:
            raise ValueError(f"--backend {backend} is built in memory by `dupmae search` from --index; "
                             f"`dupmae index` loads engine backends only ({', '.join(ENGINES)})")
        raise ValueError(f"unknown backend {backend!r}; `dupmae index` loads {', '.join(ENGINES)}")
    from dupmae.retrieval.backends.milvus import MilvusBackend, check_uri

    check_uri(uri)
    index = Path(index)
    if not (index / INDEX_MANIFEST).is_file():
        raise FileNotFoundError(f"{index} is not a dupmae index (no {INDEX_MANIFEST}); build one with `dupmae encode`")
    manifest = read_manifest(index)
    parts = index_parts(index)
    if not parts:
        raise FileNotFoundError(f"{index} holds no encoded parts")
    engine = MilvusBackend(uri, collection=collection, hnsw_m=hnsw_m, ef_construction=ef_construction)
    if replace:
        engine.drop()
    skip = 0
    if engine.exists():
        if engine.manifest() != manifest:
            raise ValueError(f"Milvus collection {collection!r} at {uri} holds another index; use --replace to "
                             "overwrite it or another --collection")
        skip = len(engine)
        logger.info("collection %s holds %d documents: resuming after them", collection, skip)
    else:
        first = load_part(parts[0])
        engine.create(manifest, None if first.dense is None else first.dense.shape[1], first.sparse_indices is not None)
    added, seen = 0, 0
    for part in parts:
        block = load_part(part)
        count = len(block.ids)
        if seen + count > skip:
            begin = max(skip - seen, 0)
            if begin:
                block = type(block)(block.ids[begin:], *(None if a is None else a[begin:] for a in
                                                         (block.dense, block.sparse_indices, block.sparse_values)))
            engine.add(block)
            added += len(block.ids)
            logger.info("%s: %d documents added", part.name, len(block.ids))
        seen += count
    engine.finish()
    if seen != manifest["corpus"]["documents"]:
        raise ValueError(f"{index}: parts hold {seen} documents but the corpus has {manifest['corpus']['documents']}"
                         " (a shard is missing or still being encoded); the collection is incomplete")
    return added


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dupmae index", description="Load a dupmae index into a search engine.")
    parser.add_argument("--backend", required=True, help=f"engine: {', '.join(ENGINES)}")
    parser.add_argument("--uri", required=True,
                        help="a local file ending in .db (embedded Milvus Lite) or http://host:19530 (a Milvus server; "
                             "token from $MILVUS_TOKEN)")
    parser.add_argument("--index", required=True, help="folder written by `dupmae encode`")
    parser.add_argument("--collection", default="dupmae")
    parser.add_argument("--replace", action="store_true", help="drop an existing collection of that name first")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree of the dense index")
    parser.add_argument("--ef-construction", type=int, default=200)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        added = load_into_engine(args.index, args.backend, args.uri, args.collection, args.replace, args.hnsw_m,
                                 args.ef_construction)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"dupmae index: error: {error}", file=sys.stderr)
        return 2
    print(f"added {added} documents to {args.backend} collection {args.collection!r} at {args.uri} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
