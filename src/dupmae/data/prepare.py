"""`dupmae prepare`: tokenize a corpus once into a memory-mapped pre-training dataset.

Pipeline (all intermediate Arrow files live in a temporary folder next to the
output, removed at the end):

1. read documents with `dupmae.data.formats` in this process (so the counts of
   documents, malformed and empty lines are exact) into a `datasets.Dataset`
   via `Dataset.from_generator` (streamed to disk, never held in a Python list);
2. tokenize them with `.map(batched=True, num_proc=N)`: content tokens only
   (`add_special_tokens=False`) plus the fast tokenizer's `word_ids()`, which
   gives word boundaries for WordPiece, BPE and SentencePiece alike;
3. cut documents into sequences (`dupmae.data.chunking`): `split` and
   `truncate` in a second parallel map, `pack` sequentially (it carries state
   from one document to the next);
4. add `example_id` (= row index), `save_to_disk`, write `manifest.json`, and
   move the finished folder into place, so an interrupted run never leaves a
   half-written output.

Output columns: `input_ids` (int32 list), `word_ids` (int32 list, -1 on special
tokens, words numbered 0, 1, ... within each sequence), `example_id` (int64).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow.compute as pc

from dupmae.config import positive_int
from dupmae.data.chunking import STRATEGIES, Packer, chunk_document, make_sequence, special_token_template
from dupmae.data.formats import (
    ON_ERROR_CHOICES,
    CorpusFormatError,
    SourceStats,
    expand_corpus_paths,
    file_sha256,
    read_documents,
)

logger = logging.getLogger(__name__)

FORMAT_NAME = "dupmae-pretrain-data"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
OUTPUT_COLUMNS = ("input_ids", "word_ids", "example_id")


class PrepareError(ValueError):
    """Bad input to `prepare` (arguments, tokenizer, output folder) or a folder that is not prepared data."""


def _features(**columns):
    from datasets import Features, Sequence, Value

    kinds = {"ids": Sequence(Value("int32")), "int32": Value("int32"), "str": Value("string")}
    return Features({name: kinds[kind] for name, kind in columns.items()})


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str):
    """Load a *fast* tokenizer from a local folder (never from a hub, never remote code).

    Fast tokenizers are required because whole-word masking needs `word_ids()`.
    """
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise PrepareError(f"tokenizer folder {path} does not exist (expected a local save_pretrained folder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # loading boundary: any failure means "not a usable tokenizer folder"
        raise PrepareError(f"could not load a tokenizer from {path}: {error}") from error
    if not getattr(tokenizer, "is_fast", False):
        raise PrepareError(
            f"the tokenizer in {path} ({type(tokenizer).__name__}) is not a fast tokenizer; "
            "word boundaries need word_ids(), so save a tokenizer.json (fast) version of it"
        )
    return tokenizer


def vocab_fingerprint(tokenizer) -> str:
    """SHA-256 of the vocabulary (token -> id, added tokens included): two tokenizers that agree
    on it map text to the same ids. Stored in the manifest as ``tokenizer.vocab_sha256``."""
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- map functions


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    """Documents -> content token ids and document-level word ids (one row per document)."""
    # split_special_tokens: a literal "[MASK]" or "</s>" in the corpus is text, not a control token.
    encoding = tokenizer(
        batch["text"],
        add_special_tokens=False,
        split_special_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    token_ids = encoding["input_ids"]
    token_words = [
        [-1 if word is None else word for word in encoding.word_ids(index)] for index in range(len(token_ids))
    ]
    return {"token_ids": token_ids, "token_words": token_words, "num_tokens": [len(ids) for ids in token_ids]}


def _chunk_batch(batch: dict, template, content_length: int, min_tokens: int, strategy: str) -> dict:
    """Documents -> sequences for `split` / `truncate`. The dropped-chunk count of a document
    rides on its last sequence (a document with a dropped chunk always keeps one), so
    summing the column afterwards is exact whatever the number of processes."""
    input_ids, word_ids, dropped_column = [], [], []
    for ids, words in zip(batch["token_ids"], batch["token_words"]):
        chunks, dropped = chunk_document(ids, words, content_length, min_tokens, strategy)
        for position, (chunk_ids, chunk_words) in enumerate(chunks):
            sequence_ids, sequence_words = make_sequence(chunk_ids, chunk_words, template)
            input_ids.append(sequence_ids)
            word_ids.append(sequence_words)
            dropped_column.append(dropped if position == len(chunks) - 1 else 0)
    return {"input_ids": input_ids, "word_ids": word_ids, "dropped_short_chunks": dropped_column}


# ----------------------------------------------------------------------------- pipeline steps


def _documents_dataset(stats: list[SourceStats], on_error: str, cache_dir: str):
    """All documents of all sources as a one-column (`text`) Dataset, read in this process."""
    from datasets import Dataset

    failure: dict = {}

    def generate():
        try:
            for source in stats:
                logger.info("reading %s", source.path)
                for document in read_documents(source.path, on_error=on_error, stats=source):
                    yield {"text": document}
        except Exception as error:  # kept so the caller re-raises it instead of datasets' wrapper
            failure["error"] = error
            raise

    try:
        dataset = Dataset.from_generator(generate, features=_features(text="str"), cache_dir=cache_dir)
    except Exception:
        if "error" in failure:
            raise failure["error"] from None
        if any(source.documents for source in stats):
            raise
        dataset = None  # an empty generator may fail inside datasets; report it as an input error below
    documents = sum(source.documents for source in stats)
    if documents == 0:
        described = ", ".join(f"{source.path} ({source.skipped_empty} empty, {source.skipped_malformed} malformed lines)"
                              for source in stats)
        raise PrepareError(f"the corpus contains no non-empty document: {described}")
    if len(dataset) != documents:  # would mean the reader's counts did not see every row
        raise RuntimeError(f"read {documents} documents but the dataset has {len(dataset)} rows")
    return dataset


def _pack(tokenized, template, content_length: int, min_tokens: int, separator_id: int, batch_size: int, cache_dir):
    """`pack` strategy: one sequential pass over the tokenized documents (state crosses documents)."""
    from datasets import Dataset

    packer = Packer(content_length, separator_id, min_tokens)
    result: dict = {}

    def generate():
        for batch in tokenized.select_columns(["token_ids", "token_words"]).iter(batch_size=batch_size):
            for ids, words in zip(batch["token_ids"], batch["token_words"]):
                for chunk in packer.add(ids, words):
                    yield dict(zip(("input_ids", "word_ids"), make_sequence(*chunk, template)))
        last, result["dropped"] = packer.finish()
        if last is not None:
            yield dict(zip(("input_ids", "word_ids"), make_sequence(*last, template)))

    features = _features(input_ids="ids", word_ids="ids")
    sequences = Dataset.from_generator(generate, features=features, cache_dir=cache_dir)
    return sequences, result["dropped"]


def _token_counts(sequences) -> tuple[int, int]:
    """(all tokens, ordinary tokens) of the sequences, summed with Arrow compute (no Python loop)."""
    lengths = pc.list_value_length(sequences.data.column("input_ids"))
    words = pc.list_flatten(sequences.data.column("word_ids"))
    tokens = int(pc.sum(lengths).as_py() or 0)
    ordinary = int(pc.sum(pc.cast(pc.greater_equal(words, 0), "int64")).as_py() or 0)
    return tokens, ordinary


def _check_output(output: str, overwrite: bool) -> None:
    """The output must be new or empty; with `overwrite`, it may also be an earlier prepared dataset.

    Anything else is refused even with `overwrite`, so a typo cannot delete an unrelated folder.
    """
    if not os.path.exists(output):
        return
    if not os.path.isdir(output):
        raise PrepareError(f"output {output} exists and is not a directory")
    if not os.listdir(output):
        return
    if not overwrite:
        raise PrepareError(f"output folder {output} exists and is not empty (pass --overwrite to replace it)")
    if not os.path.isfile(os.path.join(output, MANIFEST_NAME)):
        raise PrepareError(
            f"refusing to overwrite {output}: it is not empty and not a prepared dataset (no {MANIFEST_NAME})"
        )


def _validate_arguments(strategy, on_error, max_length, min_tokens, num_proc, batch_size) -> None:
    if strategy not in STRATEGIES:
        raise PrepareError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if on_error not in ON_ERROR_CHOICES:
        raise PrepareError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    if max_length < 1 or min_tokens < 0 or batch_size < 1:
        raise PrepareError(
            f"need max_length >= 1, min_tokens >= 0, batch_size >= 1 (got {max_length}, {min_tokens}, {batch_size})"
        )
    if num_proc is not None and num_proc < 1:
        raise PrepareError(f"num_proc must be >= 1, got {num_proc}")


# ----------------------------------------------------------------------------- public API


def prepare_corpus(
    corpus: list[str],
    tokenizer: str,
    output: str,
    max_length: int = 256,
    strategy: str = "split",
    num_proc: int | None = None,
    on_error: str = "raise",
    min_tokens: int = 16,
    batch_size: int = 1000,
    overwrite: bool = False,
) -> dict:
    """Tokenize `corpus` (files or glob patterns) into a prepared dataset folder at `output`.

    Args:
        corpus: plain text or jsonl(.gz) files / glob patterns (see `dupmae.data.formats`).
        tokenizer: local folder of a fast Hugging Face tokenizer.
        output: folder to create (must be absent or empty, or a prepared dataset with `overwrite`).
        max_length: tokens per sequence, special tokens included.
        strategy: "split", "pack" or "truncate" (see `dupmae.data.chunking`).
        num_proc: tokenizer processes; default min(4, CPU count).
        on_error: "raise" on a malformed corpus line, or "skip" (and count) it.
        min_tokens: shortest final chunk kept (content tokens).
        batch_size: documents per tokenizer call.
        overwrite: replace an earlier prepared dataset at `output`.

    Returns:
        The manifest (also written to ``output/manifest.json``).
    """
    started = time.monotonic()
    _validate_arguments(strategy, on_error, max_length, min_tokens, num_proc, batch_size)
    num_proc = num_proc or default_num_proc()
    sources = expand_corpus_paths(corpus)
    tokenizer_path = os.path.abspath(tokenizer)
    tokenizer = load_tokenizer(tokenizer_path)
    template = special_token_template(tokenizer)
    content_length = max_length - len(template[0]) - len(template[1])
    if content_length < 1:
        special = len(template[0]) + len(template[1])
        raise PrepareError(f"max_length {max_length} leaves no room for content after {special} special tokens")
    if min_tokens > content_length:
        raise PrepareError(f"min_tokens {min_tokens} is larger than the content length {content_length}")
    if strategy == "pack" and tokenizer.sep_token_id is None:
        raise PrepareError("strategy 'pack' needs a tokenizer with a sep token to put between documents")
    output = os.path.abspath(output)
    _check_output(output, overwrite)

    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    # Next to the output (same disk, so the final move is a rename), never inside it.
    work_dir = tempfile.mkdtemp(prefix=".dupmae-prepare-", dir=parent)
    try:
        stats = [SourceStats(path) for path in sources]
        documents = _documents_dataset(stats, on_error, os.path.join(work_dir, "documents"))
        processes = min(num_proc, len(documents))  # datasets refuses more processes than rows
        map_options = {"batched": True, "batch_size": batch_size, "num_proc": processes if processes > 1 else None}
        tokenized = documents.map(
            _tokenize_batch,
            remove_columns=["text"],
            features=_features(token_ids="ids", token_words="ids", num_tokens="int32"),
            fn_kwargs={"tokenizer": tokenizer},
            desc="Tokenizing",
            **map_options,
        )
        if strategy == "pack":
            sequences, dropped = _pack(
                tokenized, template, content_length, min_tokens, tokenizer.sep_token_id, batch_size,
                cache_dir=os.path.join(work_dir, "packed"),
            )
        else:
            sequences = tokenized.map(
                _chunk_batch,
                remove_columns=tokenized.column_names,
                features=_features(input_ids="ids", word_ids="ids", dropped_short_chunks="int32"),
                fn_kwargs={"template": template, "content_length": content_length,
                           "min_tokens": min_tokens, "strategy": strategy},
                desc=f"Chunking ({strategy})",
                **map_options,
            )
            dropped = int(np.asarray(sequences.with_format("numpy")["dropped_short_chunks"]).sum())
            sequences = sequences.remove_columns(["dropped_short_chunks"])
        if len(sequences) == 0:
            raise PrepareError("no sequence was produced (every document tokenized to nothing)")
        sequences = sequences.add_column("example_id", np.arange(len(sequences), dtype=np.int64))

        num_tokens = np.asarray(tokenized.with_format("numpy")["num_tokens"])
        tokens, ordinary_tokens = _token_counts(sequences)
        counts = {
            "documents": sum(source.documents for source in stats),
            "sequences": len(sequences),
            "tokens": tokens,
            "ordinary_tokens": ordinary_tokens,
            "skipped_malformed": sum(source.skipped_malformed for source in stats),
            "skipped_empty": sum(source.skipped_empty for source in stats),
            "truncated_files": sum(source.truncated_after_line is not None for source in stats),
            "documents_without_tokens": int(np.count_nonzero(num_tokens == 0)),
            "dropped_short_chunks": dropped,
        }
        manifest = _manifest(stats, tokenizer, tokenizer_path, max_length, strategy, min_tokens, counts)
        _save(sequences, manifest, os.path.join(work_dir, "dataset"), output)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    logger.info("prepared %d sequences in %.1f s -> %s", counts["sequences"], time.monotonic() - started, output)
    return manifest


def _manifest(stats, tokenizer, tokenizer_path, max_length, strategy, min_tokens, counts) -> dict:
    """What was read, with which tokenizer and settings, and what came out (see the module docstring)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "sources": [
            {"path": source.path, "sha256": file_sha256(source.path), "bytes": os.path.getsize(source.path),
             "documents": source.documents, "skipped_malformed": source.skipped_malformed,
             "skipped_empty": source.skipped_empty, "truncated_after_line": source.truncated_after_line}
            for source in stats
        ],
        "tokenizer": {"path": tokenizer_path, "class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
                      "vocab_sha256": vocab_fingerprint(tokenizer)},
        "max_length": max_length,
        "strategy": strategy,
        "min_tokens": min_tokens,
        "counts": counts,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dupmae_version": _dupmae_version(),
    }


def _save(sequences, manifest: dict, staging: str, output: str) -> None:
    """Write dataset + manifest to `staging`, then move it to `output` in one rename."""
    sequences.save_to_disk(staging)
    with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    if os.path.exists(output):
        shutil.rmtree(output)  # checked by _check_output: empty, or a prepared dataset with overwrite=True
    os.replace(staging, output)


def load_prepared(path: str):
    """Open a folder written by `prepare_corpus`: returns ``(datasets.Dataset, manifest dict)``.

    The dataset is memory-mapped (nothing is read into RAM).

    Raises:
        PrepareError: the folder is missing, has no valid manifest, or does not match it.
    """
    from datasets import Dataset, load_from_disk

    manifest_path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isdir(path):
        raise PrepareError(f"prepared dataset folder {path} does not exist")
    if not os.path.isfile(manifest_path):
        raise PrepareError(f"{path} is not a prepared dataset (no {MANIFEST_NAME}); create one with `dupmae prepare`")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise PrepareError(f"cannot read {manifest_path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise PrepareError(f"{manifest_path} is not a {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise PrepareError(
            f"{path} has format version {manifest.get('version')}; this dupmae reads version {FORMAT_VERSION}"
        )
    try:
        dataset = load_from_disk(path)
    except (OSError, ValueError) as error:
        raise PrepareError(f"cannot open the dataset in {path}: {error}") from error
    if not isinstance(dataset, Dataset) or set(OUTPUT_COLUMNS) - set(dataset.column_names):
        raise PrepareError(f"{path} does not hold a single dataset with columns {OUTPUT_COLUMNS}")
    expected_rows = (manifest.get("counts") or {}).get("sequences")
    if len(dataset) != expected_rows:
        raise PrepareError(f"{path} has {len(dataset)} rows but its manifest says {expected_rows}")
    return dataset, manifest


def default_num_proc() -> int:
    """Tokenizer processes when none is asked for: min(4, CPU count)."""
    return min(4, os.cpu_count() or 1)


def _dupmae_version() -> str:
    from dupmae import __version__

    return __version__


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupmae prepare",
        description="Tokenize a corpus into a memory-mapped pre-training dataset (Arrow) with a manifest.",
    )
    parser.add_argument("--corpus", nargs="+", required=True, metavar="FILE_OR_GLOB",
                        help="corpus files or glob patterns: .jsonl/.jsonl.gz with a 'text' field (and optional "
                             "'title'), or plain text with one document per line")
    parser.add_argument("--tokenizer", required=True, metavar="PATH",
                        help="local folder of a fast Hugging Face tokenizer (e.g. the model you will pre-train)")
    parser.add_argument("--max-length", type=positive_int, default=256,
                        help="tokens per sequence including special tokens (default: %(default)s)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output folder; must not exist or be empty (see --overwrite)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="split",
                        help="split: consecutive chunks per document; pack: concatenate documents and cut; "
                             "truncate: first chunk of each document only (default: %(default)s)")
    parser.add_argument("--num-proc", type=positive_int, default=None,
                        help="tokenizer processes (default: min(4, number of CPUs))")
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="raise",
                        help="malformed corpus line: stop with an error naming file and line, or skip and count it "
                             "(default: %(default)s)")
    parser.add_argument("--min-tokens", type=positive_int, default=16,
                        help="drop a final chunk with fewer content tokens than this, unless it is the only one "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=1000,
                        help="documents per tokenizer call (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing prepared dataset at --output")
    return parser


def main(argv: list[str]) -> int:
    arguments = build_parser().parse_args(argv)  # usage errors exit 2 through argparse
    if (arguments.num_proc or default_num_proc()) > 1:
        # Worker processes tokenize in parallel already; Rust threads inside each would oversubscribe.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    try:
        manifest = prepare_corpus(
            corpus=arguments.corpus,
            tokenizer=arguments.tokenizer,
            output=arguments.output,
            max_length=arguments.max_length,
            strategy=arguments.strategy,
            num_proc=arguments.num_proc,
            on_error=arguments.on_error,
            min_tokens=arguments.min_tokens,
            batch_size=arguments.batch_size,
            overwrite=arguments.overwrite,
        )
    except (CorpusFormatError, PrepareError, OSError) as error:
        print(f"dupmae prepare: error: {error}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    for source in manifest["sources"]:
        if source.get("truncated_after_line") is not None:
            print(f"warning: {source['path']} is damaged or truncated: read up to line {source['truncated_after_line']:,}"
                  f" ({source['documents']:,} documents); the rest of the file is lost", file=sys.stderr)
    print(
        f"{counts['documents']:,} documents -> {counts['sequences']:,} sequences, {counts['tokens']:,} tokens "
        f"({counts['ordinary_tokens']:,} ordinary) in {time.monotonic() - started:.1f} s; "
        f"skipped {counts['skipped_malformed']:,} malformed, {counts['skipped_empty']:,} empty"
        f"{', ' + str(counts['truncated_files']) + ' truncated file(s)' if counts.get('truncated_files') else ''}; "
        f"dropped {counts['dropped_short_chunks']:,} short chunks -> {arguments.output}"
    )
    return 0
