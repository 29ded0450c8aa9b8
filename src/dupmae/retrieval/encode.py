"""`dupmae encode`: encode a corpus into index parts (dense vectors + sparse top-k pairs), sharded and resumable.

    dupmae encode --model DIR --corpus BEIR_DIR_OR_corpus.jsonl --output INDEX [--shard I/N]

Documents are sorted by id, shard I of N takes the I-th contiguous slice, and each shard is written
in parts of `--part-size` documents. A part is committed by renaming its tensor file into place
after its id list, so an interrupted run resumes at the first missing part. Every part file holds
`dense [n, D]`, `sparse_indices [n, k]`, `sparse_values [n, k]` (present for the parts the
representation has); `index.json` records the model, its representation settings and the corpus hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy

from dupmae.config import positive_int
from dupmae.data.beir import load_corpus
from dupmae.data.formats import file_sha256
from dupmae.data.integrity import (DamagedFileError, load_safetensors, read_json_file, verify_safetensors,
                                   write_json_atomically)
from dupmae.platform.accelerations import Accelerations, add_arguments, from_arguments

logger = logging.getLogger(__name__)
INDEX_MANIFEST = "index.json"


def parse_shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {value!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {value}: need 0 <= I < N")
    return index, count


def part_name(shard: int, shards: int, part: int) -> str:
    return f"shard{shard:03d}-of-{shards:03d}.part{part:05d}"


def index_parts(directory: str | Path) -> list[Path]:
    """Committed part files of an index, in order."""
    return sorted(Path(directory).glob("shard*-of-*.part*.safetensors"))


PART_HINT = "rerun `dupmae encode` with the same settings to rewrite it"


def load_part(path: Path):
    """(doc ids, dense or None, sparse_indices or None, sparse_values or None) of one part; a damaged
    part file or id list is a `DamagedFileError` naming it."""
    from dupmae.retrieval.index import DocumentBlock

    tensors = load_safetensors(path, "numpy", "index part", PART_HINT)
    ids = read_json_file(path.with_suffix(".ids.json"), "index part's id list", PART_HINT)
    rows = {name: len(value) for name, value in tensors.items()}
    if not isinstance(ids, list) or any(count != len(ids) for count in rows.values()):
        raise DamagedFileError(f"{path}: {len(ids) if isinstance(ids, list) else 'no'} ids for {rows} rows; {PART_HINT}")
    return DocumentBlock(ids, tensors.get("dense"), tensors.get("sparse_indices"), tensors.get("sparse_values"))


def index_document_ids(directory: str | Path) -> set[str]:
    """Every document id held by the committed parts of an index (read from their id lists)."""
    ids: set[str] = set()
    for part in index_parts(directory):
        ids.update(read_json_file(part.with_suffix(".ids.json"), "index part's id list", PART_HINT))
    return ids


def part_problem(path: Path, expected_ids: list[str]) -> str | None:
    """Why an existing part file cannot be kept on resume (damaged, or for other documents); None if it can."""
    try:
        verify_safetensors(path, "index part")
        ids = read_json_file(path.with_suffix(".ids.json"), "index part's id list")
    except (DamagedFileError, FileNotFoundError) as error:
        return str(error)
    if ids != expected_ids:
        return f"{path.with_suffix('.ids.json').name} lists other documents than this part should hold"
    return None


MANIFEST_KEYS = ("model", "representation", "corpus", "shards")


def read_manifest(index: Path) -> dict:
    """`index.json`; damaged, or without the fields `dupmae encode` writes, is a `DamagedFileError` naming it."""
    hint = "encode the index again into a new --output"
    manifest = read_json_file(index / INDEX_MANIFEST, "index manifest", hint)
    missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if not missing and not (isinstance(manifest["corpus"], dict) and "documents" in manifest["corpus"]):
        missing = ["corpus.documents"]
    if missing:
        raise DamagedFileError(f"{index / INDEX_MANIFEST}: index manifest lacks {', '.join(missing)}; {hint}")
    return manifest


def write_manifest(output: Path, model: str, retriever, corpus_path: str, shards: int, documents: int,
                   part_size: int) -> None:
    """Write `index.json`, or check that the existing one describes this encoding (same model, settings,
    corpus, shard count and part size: parts of another layout would be skipped or mixed in)."""
    manifest = {"model": str(Path(model).resolve()), "representation": dataclasses.asdict(retriever.config),
                "corpus": {"path": str(Path(corpus_path).resolve()), "sha256": file_sha256(corpus_path),
                           "documents": documents},
                "shards": shards, "part_size": part_size}
    path = output / INDEX_MANIFEST
    if not path.is_file():
        # N shard processes may start at once: each writes its own temporary file and renames it
        # into place (atomic), so a reader never sees half a manifest; they write the same content.
        write_json_atomically(path, manifest)
    existing = read_manifest(output)
    written_part_size = existing.get("part_size", part_size)  # indexes of older dupmae versions did not record it
    if written_part_size != part_size:
        raise ValueError(f"{output} was encoded in parts of {written_part_size} documents, not {part_size}: rerun "
                         f"with --part-size {written_part_size} to resume it, or encode into a new --output")
    existing.setdefault("part_size", part_size)
    if existing != manifest:
        raise ValueError(f"{output} holds an index of another model, corpus or shard count "
                         f"({path}); use a new --output")


def encode_corpus(model: str, corpus_path: str, output: str | Path, shard: tuple[int, int] = (0, 1),
                  part_size: int = 10_000, batch_size: int = 64, bf16: bool | str = "auto",
                  accelerations: Accelerations | None = None) -> int:
    """Encode this shard's documents; returns how many were encoded now (0 if all parts existed).
    `bf16`: auto / true / false; `accelerations`: the platform settings (`dupmae.platform`)."""
    from dupmae.modeling.retriever import Retriever

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(corpus_path)
    retriever = Retriever.from_pretrained(model, batch_size=batch_size, bf16=bf16, accelerations=accelerations)
    index, count = shard
    write_manifest(output, model, retriever, corpus_path, count, len(corpus), part_size)
    ids = sorted(corpus)
    mine = ids[len(ids) * index // count : len(ids) * (index + 1) // count]
    encoded = 0
    for part, start in enumerate(range(0, len(mine), part_size)):
        final = output / f"{part_name(index, count, part)}.safetensors"
        part_ids = mine[start : start + part_size]
        if final.is_file():
            problem = part_problem(final, part_ids)
            if problem is None:
                logger.info("%s exists, skipped", final.name)
                continue
            logger.warning("%s cannot be kept (%s): encoding it again", final.name, problem)
        block = retriever.encode_corpus([corpus[d] for d in part_ids], part_ids)
        tensors = {name: np.ascontiguousarray(value) for name, value in
                   (("dense", block.dense), ("sparse_indices", block.sparse_indices), ("sparse_values", block.sparse_values))
                   if value is not None}
        final.with_suffix(".ids.json").write_text(json.dumps(part_ids))
        temporary = final.with_name(final.name + ".tmp")
        safetensors.numpy.save_file(tensors, str(temporary))
        os.replace(temporary, final)  # the commit point of this part
        encoded += len(part_ids)
        logger.info("wrote %s (%d documents)", final.name, len(part_ids))
    return encoded


def main(argv: list[str]) -> int:
    from dupmae.retrieval.mine import input_paths

    parser = argparse.ArgumentParser(prog="dupmae encode", description="Encode a corpus into a dupmae index.")
    parser.add_argument("--model", required=True, help="retriever folder written by `dupmae finetune`")
    parser.add_argument("--corpus", required=True, help="BEIR folder or corpus.jsonl")
    parser.add_argument("--output", required=True, help="index folder (created; reruns resume)")
    parser.add_argument("--shard", default="0/1", help="I/N: encode the I-th of N slices (default 0/1)")
    parser.add_argument("--part-size", type=positive_int, default=10_000, help="documents per part file")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_arguments(parser, ("keep_freed_memory", "compile_layers"))
    args = parser.parse_args(argv)
    try:
        corpus_path = input_paths(args.corpus, None)[0] if os.path.isdir(args.corpus) else args.corpus
        if not os.path.isfile(corpus_path):
            raise FileNotFoundError(f"corpus file {corpus_path} not found")
        count = encode_corpus(args.model, corpus_path, args.output, parse_shard(args.shard), args.part_size,
                              args.batch_size, args.bf16, from_arguments(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"dupmae encode: error: {error}", file=sys.stderr)
        return 2
    print(f"encoded {count} documents into {args.output}")
    return 0
