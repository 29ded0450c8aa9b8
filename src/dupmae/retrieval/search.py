"""`dupmae search`: queries against a dupmae index through a search backend, to a TREC run.

    dupmae search --model DIR --index INDEX --queries queries.jsonl [--qrels F] --top-k 1000 --output run.trec
    dupmae search ... --backend union --dense-index HNSW32        # FAISS dense ∪ sparse inverted-index candidates
    dupmae search --model DIR --backend milvus --uri index.db ...   # candidates from Milvus (`dupmae index`)
    dupmae search --model DIR --backend milvus --uri index.db --index INDEX ...   # re-scored from INDEX's parts

Backends (`dupmae.retrieval.backends`): `exact` (default) scores every part exactly, one part at a
time, keeping the best `top_k` hits per query, so memory stays `queries x (top_k + part size)`;
`faiss`, `sparse`, `union` and `milvus` find candidates approximately and re-score them with the
exact DupMAE score. `--dense-index FACTORY` other than `Flat` without `--backend` means `union`.
`milvus` with `--index` (the index `dupmae index` loaded) re-scores from that index's parts in memory;
without it, from vectors fetched back from the engine (slower; the same hits and scores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm.auto import tqdm

from dupmae.config import positive_int
from dupmae.platform.accelerations import add_arguments
from dupmae.retrieval.backends import NAMES, make_backend
from dupmae.retrieval.backends.exact import ExactBackend, search_blocks  # noqa: F401  (search_blocks: public here)
from dupmae.retrieval.encode import INDEX_MANIFEST, index_document_ids, index_parts, load_part, read_manifest


def resolve_backend(backend: str | None, dense_index: str | None) -> tuple[str, str]:
    """(backend name, FAISS factory) from the flags: no --backend = exact, or union with a --dense-index
    other than Flat; the factory defaults to HNSW32."""
    if backend is None:
        backend = "exact" if dense_index in (None, "Flat") else "union"
    elif backend == "exact" and dense_index not in (None, "Flat"):
        raise ValueError(f"--dense-index {dense_index} has no effect with --backend exact")
    return backend, dense_index or "HNSW32"


def check_index(index: Path, retriever) -> tuple[dict, list[Path]]:
    manifest_path = index / INDEX_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{index} is not a dupmae index (no {INDEX_MANIFEST}); build one with `dupmae encode`")
    manifest = read_manifest(index)
    if manifest["representation"] != dataclasses.asdict(retriever.config):
        raise ValueError(f"the index {index} was encoded with other representation settings than this model")
    parts = index_parts(index)
    if not parts:
        raise FileNotFoundError(f"{index} holds no encoded parts")
    return manifest, parts


def search_index(retriever, index: str | Path | None, queries: dict[str, str], top_k: int = 1000,
                 exclude_self: bool = False, dense_index: str | None = None, candidates: int | None = None,
                 threads: int = 1, backend: str | None = None, uri: str | None = None,
                 sparse_candidates: int | None = None, sparse_query_terms: int = 64, fusion: str = "exact",
                 collection: str | None = None) -> dict[str, list[tuple[str, float]]]:
    """{query id: [(doc id, score), ...]} best first, from the backend named (see the module docstring)."""
    name, factory = resolve_backend(backend, dense_index)
    config = retriever.config
    if dense_index not in (None, "Flat") and not config.uses_dense:
        raise ValueError(f"--dense-index {dense_index}: the {config.representation!r} representation has no dense part")
    engine = make_backend(name, uri=uri, dense_index=factory, candidates=candidates or top_k,
                          sparse_candidates=sparse_candidates, sparse_query_terms=sparse_query_terms, threads=threads,
                          fusion=fusion, collection=collection, dense=config.uses_dense, sparse=config.uses_sparse)
    if name == "milvus":
        manifest = engine.manifest()
        if manifest["representation"] != dataclasses.asdict(config):
            raise ValueError(f"the Milvus collection {engine.collection!r} was encoded with other representation "
                             "settings than this model")
        expected = manifest["corpus"]["documents"]
        where = f"Milvus collection {engine.collection!r} at {uri}"
    else:
        if index is None:
            raise ValueError(f"the {name} backend needs --index (a folder written by `dupmae encode`)")
        index = Path(index)
        manifest, parts = check_index(index, retriever)
        expected = manifest["corpus"]["documents"]
        where = f"{index}: parts"
        if name == "exact":
            for part in parts:
                engine.add_loader(lambda part=part: load_part(part))
        else:
            for part in tqdm(parts, desc="loading", unit="part", disable=not retriever.show_progress):
                engine.add(load_part(part))
        if name != "exact" and len(engine) != expected:
            raise ValueError(f"{where} hold {len(engine)} documents but the corpus has {expected}"
                             " (a shard is missing or still being encoded)")
    if name == "milvus" and len(engine) != expected:
        raise ValueError(f"{where} holds {len(engine)} documents but the corpus has {expected}"
                         " (`dupmae index` did not finish)")
    if name == "milvus" and index is not None and fusion == "exact":
        use_local_index(engine, Path(index), manifest, retriever)
    query_ids = list(queries)
    encoded = retriever.encode_queries([queries[q] for q in query_ids], query_ids)
    if name == "exact":
        def progress(sources):
            return tqdm(sources, desc="searching", unit="part", disable=not retriever.show_progress)

        hits = engine.search(encoded, top_k, exclude_self, wrap=progress)
        if engine.searched != expected:
            raise ValueError(f"{where} hold {engine.searched} documents but the corpus has {expected}"
                             " (a shard is missing or still being encoded)")
        return hits.results(query_ids)
    hits = engine.search(encoded, top_k + int(exclude_self))
    return hits.results(query_ids, top_k, exclude_self)


def use_local_index(engine, index: Path, manifest: dict, retriever) -> None:
    """Let the Milvus backend `engine` re-score its candidates from the parts of `index` (held in
    memory, as `union` holds them) instead of fetching their vectors from the engine; `index` must be
    the one `dupmae index` loaded into the collection (same manifest)."""
    from dupmae.retrieval.approximate import concatenate

    local_manifest, parts = check_index(index, retriever)
    if local_manifest != manifest:
        raise ValueError(f"the index {index} is not the one loaded into Milvus collection {engine.collection!r} "
                         "(their manifests differ); give the --index that `dupmae index` loaded, or no --index "
                         "to fetch the candidates' vectors from the engine")
    blocks = [load_part(part) for part in tqdm(parts, desc="loading", unit="part", disable=not retriever.show_progress)]
    engine.use_local(concatenate(blocks))


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=NAMES, default=None,
                        help="exact (default): every document scored exactly; faiss / sparse / union: FAISS dense / "
                             "inverted-index sparse / both candidates, re-scored exactly; milvus: candidates from a "
                             "Milvus collection loaded by `dupmae index` (--uri)")
    parser.add_argument("--uri", default=None,
                        help="milvus: a local file ending in .db (embedded Milvus Lite) or http://host:19530 (a server)")
    parser.add_argument("--collection", default=None, help="milvus: collection name (default: dupmae)")
    parser.add_argument("--fusion", choices=("exact", "rrf"), default="exact",
                        help="milvus: exact = re-score the engine's candidates with the DupMAE score (default); "
                             "rrf = the engine's own reciprocal-rank fusion of its dense and sparse results")


def main(argv: list[str]) -> int:
    from dupmae.data.beir import load_qrels, load_queries, searchable_queries, warn_unknown_judged_documents
    from dupmae.modeling.retriever import Retriever
    from dupmae.retrieval.trec import write_run

    parser = argparse.ArgumentParser(prog="dupmae search", description="Search a dupmae index.")
    parser.add_argument("--model", required=True, help="the retriever folder the index was encoded with")
    parser.add_argument("--index", default=None,
                        help="folder written by `dupmae encode` (every backend but milvus; with milvus, optional: the "
                             "index `dupmae index` loaded, whose vectors then re-score the engine's candidates "
                             "instead of vectors fetched back from the engine)")
    parser.add_argument("--queries", required=True, help="queries.jsonl")
    parser.add_argument("--qrels", help="only search the queries judged in this qrels file")
    parser.add_argument("--top-k", type=positive_int, default=1000)
    parser.add_argument("--output", required=True, help="TREC run file to write")
    parser.add_argument("--remove-self-hits", action="store_true", help="drop hits whose doc id equals the query id")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_arguments(parser, ())
    parser.add_argument("--tag", default="dupmae")
    add_backend_arguments(parser)
    parser.add_argument("--dense-index", default=None,
                        help="FAISS factory string for the dense candidates of --backend faiss / union (default "
                             "HNSW32); without --backend: Flat = exact search, anything else = --backend union")
    parser.add_argument("--candidates", type=positive_int, default=None,
                        help="dense candidates per query of an approximate backend (default: --top-k)")
    parser.add_argument("--sparse-candidates", type=positive_int, default=None,
                        help="sparse candidates per query (default: --candidates)")
    parser.add_argument("--sparse-query-terms", type=int, default=64,
                        help="a query's largest-|weight| vocabulary entries used to find sparse candidates "
                             "(0 = all; re-scoring always uses the full query vector)")
    parser.add_argument("--threads", type=positive_int, default=1, help="FAISS threads")
    args = parser.parse_args(argv)
    try:
        if args.backend != "milvus" and args.index is None:
            raise ValueError("--index is required (except with --backend milvus)")
        if args.backend == "milvus":
            from dupmae.retrieval.backends.milvus import check_uri

            if args.uri is None:
                raise ValueError("--backend milvus needs --uri: a file ending in .db (embedded Milvus Lite) or "
                                 "http://host:19530 (a Milvus server)")
            check_uri(args.uri)
        queries = load_queries(args.queries)
        if not args.qrels:
            queries = searchable_queries(queries, None, args.queries)
        else:
            judged = load_qrels(args.qrels)
            missing = sorted(set(judged) - set(queries))
            if missing:
                raise ValueError(f"{args.qrels}: query ids not in {args.queries}: {missing[:5]}")
            queries = searchable_queries(queries, judged, args.qrels)
            if args.index is not None:
                warn_unknown_judged_documents(judged, index_document_ids(args.index), args.qrels,
                                              f"the index {args.index}")
        retriever = Retriever.from_pretrained(args.model, batch_size=args.batch_size, bf16=args.bf16)
        results = search_index(retriever, args.index, queries, args.top_k, args.remove_self_hits, args.dense_index,
                               args.candidates, args.threads, args.backend, args.uri, args.sparse_candidates,
                               args.sparse_query_terms, args.fusion, args.collection)
        lines = write_run(args.output, results, args.tag)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"dupmae search: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(results)} queries, {lines} hits -> {args.output}")
    return 0
