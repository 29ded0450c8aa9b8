"""`dupmae beir`: zero-shot evaluation of retrievers, BM25 and their hybrids on many BEIR-format collections.

    dupmae beir --systems NAME=MODEL ... [--bm25] [--hybrid-weight W] --collections DIR ... --output DIR

A collection needs only ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv`` (``--split``). A
system's MODEL is a retriever folder (from `dupmae finetune`, or one made by the pipeline) or any local
encoder folder / the ``minilm`` shorthand, which is wrapped zero-shot the way `dupmae run` wraps its
starting model (mean pooling, cosine). With ``--hybrid-weight W`` (and ``--bm25``) every system is also
fused with BM25: ``W x system + (1 - W) x BM25`` (min-max), a fixed weight since a zero-shot target has
no dev split.

Work is cached per (system, collection) in ``OUTPUT/collections/<collection>/<system>/``: the encoded
index (resumable parts), ``run.trec``, and ``done.json`` written last. A rerun skips what is done; an
interrupted run resumes at its first missing index part; a changed model, collection or setting (the
key in ``key.json``) starts that folder again. The report (`dupmae.pipeline.beir_report`) evaluates the
stored runs with the same code as `dupmae evaluate`, so both give the same numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dupmae.config import positive_int
from dupmae.data.beir import (
    empty_documents,
    is_empty_text,
    load_corpus,
    load_qrels,
    load_queries,
    searchable_queries,
    warn_unknown_judged_documents,
)
from dupmae.data.formats import CorpusFormatError, file_sha256
from dupmae.evaluation.metrics import parse_metric
from dupmae.pipeline.config import ZERO_SHOT_DEFAULTS
from dupmae.pipeline.data import PUBLIC_COLLECTIONS, DownloadError, MissingDataError, data_root, download_collection
from dupmae.pipeline.data import folder_fingerprint, resolve_model
from dupmae.platform.precision import parse_bf16

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when a cached run changes meaning
DONE, KEY = "done.json", "key.json"
BM25_NAME = "BM25"
DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BeirCollection:
    """A BEIR folder and the split evaluated; `name` labels it in the report (unique within a run)."""

    name: str
    folder: Path
    split: str = "test"

    @property
    def corpus(self) -> Path:
        return self.folder / "corpus.jsonl"

    @property
    def queries(self) -> Path:
        return self.folder / "queries.jsonl"

    @property
    def qrels(self) -> Path:
        return self.folder / "qrels" / f"{self.split}.tsv"

    def check(self) -> None:
        """FileNotFoundError naming every missing file and the layout expected."""
        missing = [str(path) for path in (self.corpus, self.queries, self.qrels) if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"collection {self.name!r} ({self.folder}): missing {', '.join(missing)}; a BEIR "
                                    f"folder holds corpus.jsonl, queries.jsonl and qrels/{self.split}.tsv")

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in (self.corpus, self.queries, self.qrels):
            digest.update(file_sha256(str(path)).encode())
        return digest.hexdigest()


@dataclass
class LoadedCollection:
    """What a collection holds once read, and the counts the report shows."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]  # judged queries with a text: the ones searched
    qrels: dict[str, dict[str, int]]
    stats: dict = field(default_factory=dict)


def load_collection(collection: BeirCollection) -> LoadedCollection:
    """Read a collection as real ones come: empty documents are documents; unjudged queries are never
    searched; a judged empty query is not searched and scores 0; judged ids missing from the corpus are
    counted misses (a warning); a judged query missing from the queries file is an error."""
    collection.check()
    corpus = load_corpus(str(collection.corpus))
    all_queries = load_queries(str(collection.queries))
    qrels = load_qrels(str(collection.qrels))
    unknown = sorted(set(qrels) - set(all_queries))
    if unknown:
        raise CorpusFormatError(f"{collection.qrels}: {len(unknown)} judged query id(s) are not in "
                                f"{collection.queries}, e.g. {unknown[:5]}")
    unknown_documents = warn_unknown_judged_documents(qrels, corpus, str(collection.qrels), str(collection.corpus))
    queries = searchable_queries(all_queries, qrels, f"{collection.name}: {collection.qrels}")
    stats = {
        "documents": len(corpus),
        "empty_documents": len(empty_documents(corpus)),
        "queries": len(all_queries),
        "empty_queries": sum(1 for text in all_queries.values() if is_empty_text(text)),
        "judged_queries": len(qrels),
        "searched_queries": len(queries),
        "judged_empty_queries": len(qrels) - len(queries),
        "judgements": sum(len(docs) for docs in qrels.values()),
        "judged_without_relevant": sum(1 for docs in qrels.values() if not any(r > 0 for r in docs.values())),
        "unknown_judged_documents": unknown_documents,
    }
    return LoadedCollection(corpus, queries, qrels, stats)


@dataclass
class Settings:
    """Everything that decides a run (and so the cache keys), apart from the model and the collection."""

    top_k: int = 1000
    batch_size: int = 32
    bf16: str = "auto"
    part_size: int = 1000
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    hybrid_weight: float | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **payload}, sort_keys=True).encode()).hexdigest()


def _claim(folder: Path, key: str) -> dict | None:
    """The finished record when `folder` holds this key's work; otherwise make it this key's folder
    (removing another key's work, keeping this key's partial work) and return None."""
    key_file = folder / KEY
    if key_file.is_file() and json.loads(key_file.read_text()).get("key") == key:
        done = folder / DONE
        return json.loads(done.read_text()) if done.is_file() else None
    if folder.exists():
        logger.info("%s holds the work of other settings, a model or collection that changed: starting it again", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    key_file.write_text(json.dumps({"key": key}) + "\n")
    return None


def _finish(folder: Path, record: dict) -> dict:
    """`done.json`, written last through a rename: it exists complete or not at all."""
    temporary = folder / f".{DONE}.tmp"
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, folder / DONE)
    return record


def _write(folder: Path, results: dict, tag: str, started: float, extra: dict | None = None) -> dict:
    from dupmae.retrieval.trec import write_run

    write_run(str(folder / "run.trec"), results, tag)
    return _finish(folder, {"run": "run.trec", "queries": len(results), "seconds": time.monotonic() - started,
                            **(extra or {})})


def neural_run(model: Path, fingerprint: str, collection: BeirCollection, loaded: LoadedCollection,
               folder: Path, settings: Settings) -> dict:
    """Encode the corpus (resumable parts) and search the judged queries exactly; cached."""
    from dupmae.modeling.retriever import Retriever
    from dupmae.retrieval.encode import encode_corpus
    from dupmae.retrieval.search import search_index

    key = _key({"kind": "neural", "model": fingerprint, "collection": collection.fingerprint(),
                "split": collection.split, "top_k": settings.top_k, "bf16": settings.bf16})
    record = _claim(folder, key)
    if record is not None:
        return {**record, "cached": True}
    started = time.monotonic()
    encode_corpus(str(model), str(collection.corpus), folder / "index", (0, 1), part_size=settings.part_size,
                  batch_size=settings.batch_size, bf16=settings.bf16)
    retriever = Retriever.from_pretrained(model, batch_size=settings.batch_size, bf16=settings.bf16)
    results = search_index(retriever, folder / "index", loaded.queries, settings.top_k)
    return {**_write(folder, results, "dupmae", started), "cached": False}


def bm25_run(collection: BeirCollection, loaded: LoadedCollection, folder: Path, settings: Settings) -> dict:
    """BM25 (bm25s, Lucene, English stemming and stop words) over title + text; cached."""
    from dupmae.retrieval.bm25 import BM25Index

    key = _key({"kind": "bm25", "collection": collection.fingerprint(), "split": collection.split,
                "top_k": settings.top_k, "k1": settings.bm25_k1, "b": settings.bm25_b})
    record = _claim(folder, key)
    if record is not None:
        return {**record, "cached": True}
    started = time.monotonic()
    index = BM25Index.build(loaded.corpus, k1=settings.bm25_k1, b=settings.bm25_b, show_progress=False)
    results = index.search(loaded.queries, settings.top_k)
    return {**_write(folder, results, "bm25", started), "cached": False}


def hybrid_run(neural_folder: Path, bm25_folder: Path, folder: Path, weight: float, top_k: int) -> dict:
    """`weight x neural + (1 - weight) x BM25` over min-max-normalised scores (`dupmae fuse --weight`); fused
    again at every run from the two cached runs (milliseconds)."""
    from dupmae.retrieval.fusion import fuse
    from dupmae.retrieval.trec import ranked, read_run

    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    fused = fuse(read_run(str(neural_folder / "run.trec")), read_run(str(bm25_folder / "run.trec")),
                 weight, method="minmax", depth=top_k)
    results = {query_id: ranked(hits)[:top_k] for query_id, hits in fused.items()}
    return {**_write(folder, results, "hybrid", started, {"weight": weight}), "cached": False}


# -- systems -------------------------------------------------------------------------------------------


def _plain_name(name: str) -> bool:
    """A system's name (or work folder): a path component of its own, never BM25's, never a hybrid's ('+')."""
    return bool(_NAME.match(name)) and name != BM25_NAME and "+" not in name


def parse_system(text: str) -> tuple[str, str]:
    """``NAME=MODEL`` -> (name, model); the name labels the system and names its folders."""
    name, separator, model = text.partition("=")
    if not separator or not model:
        raise ValueError(f"--systems {text!r}: expected NAME=MODEL_DIR (e.g. finetuned=runs/ft/model)")
    if not _plain_name(name):
        raise ValueError(f"--systems {text!r}: a name is letters, digits, '.', '_' or '-' (and not {BM25_NAME!r})")
    return name, model


def retriever_folder(name: str, model: str, models_folder: Path) -> tuple[Path, str]:
    """(retriever folder, how it was made): a retriever folder as it is; any other encoder wrapped zero-shot
    (`ZERO_SHOT_DEFAULTS`) into ``models_folder/name``, rewrapped only when the source changed."""
    from dupmae.modeling.representation import CONFIG_FILE, DupMAEEncoder, RepresentationConfig, load_tokenizer

    path = Path(model).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path.resolve(), "retriever"
    source, label = resolve_model(model)  # a local folder or the 'minilm' shorthand; clear error otherwise
    wrapped = models_folder / name
    stamp = {"source": str(source), "fingerprint": folder_fingerprint(source), "zero_shot": ZERO_SHOT_DEFAULTS}
    stamp_file = wrapped / "wrapped_from.json"
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        shutil.rmtree(wrapped, ignore_errors=True)
        DupMAEEncoder.from_pretrained(source, RepresentationConfig(**ZERO_SHOT_DEFAULTS)).save_pretrained(
            wrapped, load_tokenizer(source))
        stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    return wrapped, f"{label} zero-shot"


def collection_names(folders: list[Path]) -> list[str]:
    """Folder names, made unique with -2, -3, ... where two collections share one."""
    names, seen = [], {}
    for folder in folders:
        base = folder.name or "collection"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def evaluate_collections(systems: dict[str, str], collections: list[BeirCollection], output: Path,
                         settings: Settings, bm25: bool = False, progress=None,
                         hybrid_weights: dict[str, float] | None = None, labels: dict[str, str] | None = None,
                         folders: dict[str, str] | None = None) -> dict:
    """Run every system (and BM25, and hybrids) on every collection, cached; write the report.

    Args:
        systems: ``{name: model}`` (retriever folders, or encoders to wrap zero-shot).
        collections: the collections, names unique.
        output: the report folder (``report.md``, ``results.json``, ``ndcg.png``, ``per_query/``).
        settings: `Settings`; `hybrid_weight` not None adds ``NAME + BM25`` for every system (needs `bm25`).
        hybrid_weights: ``{name: weight}``: ``NAME + BM25`` for these systems only, each with its own weight
            (`dupmae run` passes the weights it chose on its dev split); overrides `settings.hybrid_weight`.
        labels: ``{name: label}`` shown in the report instead of the model folders.
        folders: ``{name: folder name}`` of each system's work under ``collections/<collection>/`` (default: the
            system's name). The cache holds one model's work per folder; `dupmae run` names them by the stage
            that made the model, so two seeds' runs in one output folder keep both caches.

    Returns:
        The results dictionary also written to ``results.json``.
    """
    from dupmae.pipeline.beir_report import write_report

    progress = progress or sys.stderr  # looked up at call time (a test may have replaced it)
    if not systems and not bm25:
        raise ValueError("nothing to evaluate: give --systems NAME=MODEL_DIR ..., --bm25, or both")
    if settings.hybrid_weight is not None and not (bm25 and systems):
        raise ValueError("--hybrid-weight fuses systems with BM25: it needs --bm25 and at least one system")
    if hybrid_weights is None:
        hybrid_weights = {} if settings.hybrid_weight is None else dict.fromkeys(systems, settings.hybrid_weight)
    if hybrid_weights and not bm25:
        raise ValueError("hybrids fuse systems with BM25: BM25 must be run too")
    names = [collection.name for collection in collections]
    if len(set(names)) != len(names):
        raise ValueError(f"collection names must be unique: {names}")
    for metric in settings.metrics:
        parse_metric(metric)
    folders = {name: (folders or {}).get(name, name) for name in systems}
    if len(set(folders.values())) != len(folders) or not all(map(_plain_name, folders.values())):
        raise ValueError(f"system work folders must be unique names of letters, digits, '.', '_' or '-' "
                         f"(and not {BM25_NAME!r}): {folders}")
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    models = {name: retriever_folder(name, model, output / "models") for name, model in systems.items()}
    fingerprints = {name: folder_fingerprint(folder) for name, (folder, _) in models.items()}
    records: dict[str, dict[str, dict]] = {}  # system -> collection -> run record (with its folder)
    info: dict[str, dict] = {}
    for position, collection in enumerate(collections, start=1):
        loaded = load_collection(collection)
        info[collection.name] = {"folder": str(collection.folder.resolve()), "split": collection.split,
                                 "fingerprint": collection.fingerprint(), **loaded.stats}
        work = output / "collections" / collection.name

        def record(system: str, folder: Path, make) -> None:
            print(f"[{position}/{len(collections)}] {collection.name}: {system} ...", file=progress, flush=True)
            result = make()
            print(f"[{position}/{len(collections)}] {collection.name}: {system} ... "
                  f"{'cached' if result['cached'] else 'done in %.1fs' % result['seconds']}", file=progress, flush=True)
            records.setdefault(system, {})[collection.name] = {**result, "folder": str(folder)}

        if bm25:
            record(BM25_NAME, work / BM25_NAME, lambda: bm25_run(collection, loaded, work / BM25_NAME, settings))
        for name, (model, _) in models.items():
            neural = work / folders[name]
            record(name, neural, lambda: neural_run(model, fingerprints[name], collection, loaded, neural, settings))
            if name in hybrid_weights:
                fused = work / f"{folders[name]}+{BM25_NAME}"
                record(f"{name} + {BM25_NAME}", fused,
                       lambda: hybrid_run(neural, work / BM25_NAME, fused, hybrid_weights[name], settings.top_k))
    shown = {BM25_NAME: "BM25"} | {name: f"{name} ({how}: {folder})" for name, (folder, how) in models.items()}
    shown |= {f"{name} + {BM25_NAME}": f"{name} fused with BM25 (weight {weight})" for name, weight in hybrid_weights.items()}
    return write_report(output, collections, info, records, shown | (labels or {}), settings,
                        time.monotonic() - started)


# -- the verb ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupmae beir", description=__doc__.split("\n\n")[0],
        epilog="Example: dupmae beir --systems ft=runs/ft/model minilm=minilm --bm25 --hybrid-weight 0.5 "
               "--collections ../shared/data/transfer/* --output runs/transfer")
    parser.add_argument("--systems", nargs="+", default=[], metavar="NAME=MODEL",
                        help="retriever folders (dupmae finetune) or encoders to wrap zero-shot ('minilm' = "
                             "all-MiniLM-L6-v2 from its package)")
    parser.add_argument("--bm25", action="store_true", help="also run BM25 (bm25s, Lucene variant)")
    parser.add_argument("--hybrid-weight", type=float, default=None, metavar="W",
                        help="add 'NAME + BM25' for every system: W x neural + (1 - W) x BM25, min-max scores")
    parser.add_argument("--collections", nargs="*", default=[], metavar="DIR", help="BEIR folders")
    parser.add_argument("--download", nargs="+", default=[], metavar="NAME",
                        help=f"fetch public BEIR collections into --data-root (md5 checked): "
                             f"{', '.join(PUBLIC_COLLECTIONS)}")
    parser.add_argument("--data-root", default=None, help="where --download puts collections "
                                                          "(default $DUPMAE_DATA or ../shared/data)")
    parser.add_argument("--output", required=True, help="report folder (and the cache of every run)")
    parser.add_argument("--split", default="test", help="qrels/SPLIT.tsv of every collection (default test)")
    parser.add_argument("--top-k", type=positive_int, default=1000)
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--part-size", type=positive_int, default=1000, help="documents per resumable index part")
    parser.add_argument("--bf16", default="auto", help="auto (bf16 where the machine multiplies it natively), true, false")
    parser.add_argument("--bm25-k1", type=float, default=1.5)
    parser.add_argument("--bm25-b", type=float, default=0.75)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.hybrid_weight is not None and not 0.0 <= args.hybrid_weight <= 1.0:
            raise ValueError(f"--hybrid-weight must be in [0, 1], got {args.hybrid_weight}")
        parse_bf16(args.bf16)
        systems = dict(parse_system(text) for text in args.systems)
        folders = [Path(folder) for folder in args.collections]
        if args.download:
            root = data_root(args.data_root)
            for name in args.download:
                target = root / name
                folders.append(target if target.is_dir() else download_collection(name, root))
        if not folders:
            raise ValueError("no collections: give --collections DIR ... or --download NAME ...")
        for folder in folders:
            if not folder.is_dir():
                raise FileNotFoundError(f"--collections: {folder} is not a folder")
        collections = [BeirCollection(name, folder, args.split)
                       for name, folder in zip(collection_names(folders), folders)]
        settings = Settings(top_k=args.top_k, batch_size=args.batch_size, bf16=args.bf16, part_size=args.part_size,
                            bm25_k1=args.bm25_k1, bm25_b=args.bm25_b, hybrid_weight=args.hybrid_weight,
                            metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()))
        results = evaluate_collections(systems, collections, Path(args.output), settings, bm25=args.bm25)
    except (CorpusFormatError, DownloadError, MissingDataError, OSError, ValueError) as error:
        print(f"dupmae beir: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.output) / 'report.md'} ({len(results['systems'])} systems x "
          f"{len(results['collections'])} collections)")
    return 0
