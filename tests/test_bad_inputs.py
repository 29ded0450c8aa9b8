"""Every bad input of docs/reliability.md's table, run through the CLI: the exit status and the exact message
it gets (paths shown as <tmp>). The same messages stand in that table; a test checks they agree."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from transformers import AutoTokenizer

from dupmae.cli import main as cli
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
from test_finetune import tiny_encoder_dir, write_beir
from test_training import make_model, write_corpus

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


@dataclass
class Case:
    name: str
    command: Callable[[dict, Path], list[str]]  # (shared fixtures, a fresh folder) -> CLI argv
    status: int
    message: str  # the line of stderr or of the warnings that says what is wrong, with <tmp> for paths


@pytest.fixture(scope="module")
def ws(tmp_path_factory, wordpiece_dir):
    """A tiny retriever, a BEIR collection, its index (parts of 7 documents), prepared pre-training data."""
    root = tmp_path_factory.mktemp("bad")
    start = tiny_encoder_dir(root / "start", wordpiece_dir)
    config = RepresentationConfig(representation="dupmae", dense_dim=16, sparse_top_k=6, sparse_activation="relu")
    DupMAEEncoder.from_pretrained(start, config).save_pretrained(root / "retriever", AutoTokenizer.from_pretrained(start))
    beir = write_beir(root / "beir")
    assert cli(["encode", "--model", str(root / "retriever"), "--corpus", str(beir), "--output", str(root / "index"),
                "--part-size", "7", "--keep-freed-memory", "false"]) == 0
    assert cli(["prepare", "--corpus", str(write_corpus(root / "corpus.jsonl")), "--tokenizer", wordpiece_dir,
                "--max-length", "32", "--output", str(root / "data"), "--num-proc", "1"]) == 0
    make_model(root / "mlm", wordpiece_dir, dropout=0.0)
    return {"root": root, "retriever": str(root / "retriever"), "beir": beir, "index": root / "index",
            "data": str(root / "data"), "mlm": str(root / "mlm"), "tokenizer": wordpiece_dir}


def copy_index(ws, folder: Path) -> Path:
    return Path(shutil.copytree(ws["index"], folder / "index"))


def search(ws, index: Path, folder: Path, *extra) -> list[str]:
    return ["search", "--model", ws["retriever"], "--index", str(index), "--queries", str(ws["beir"] / "queries.jsonl"),
            "--top-k", "5", "--output", str(folder / "run.trec"), *extra]


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def empty_corpus(ws, folder):
    (folder / "empty.jsonl").write_text("\n\n")
    return ["prepare", "--corpus", str(folder / "empty.jsonl"), "--tokenizer", ws["tokenizer"], "--output",
            str(folder / "out")]


def malformed_corpus_line(ws, folder):
    (folder / "bad.jsonl").write_text('{"text": "gene"}\n{"text": "cell"\n')
    return ["prepare", "--corpus", str(folder / "bad.jsonl"), "--tokenizer", ws["tokenizer"], "--output",
            str(folder / "out")]


def truncated_gzip_skipped(ws, folder):
    path = folder / "cut.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.writelines(f'{{"text": "gene {i} of the mouse brain"}}\n' for i in range(400))
    cut(path)
    return ["prepare", "--corpus", str(path), "--tokenizer", ws["tokenizer"], "--output", str(folder / "out"),
            "--on-error", "skip", "--min-tokens", "1", "--max-length", "16", "--num-proc", "1"]


def negative_max_steps(ws, folder):
    return ["pretrain", "--model", ws["mlm"], "--data", ws["data"], "--output", str(folder / "out"), "--max-steps", "-5"]


def zero_batch_size(ws, folder):
    return ["pretrain", "--model", ws["mlm"], "--data", ws["data"], "--output", str(folder / "out"),
            "--per-device-train-batch-size", "0"]


def resume_without_checkpoint(ws, folder):
    return ["pretrain", "--model", ws["mlm"], "--data", ws["data"], "--output", str(folder), "--resume"]


def zero_part_size(ws, folder):
    return ["encode", "--model", ws["retriever"], "--corpus", str(ws["beir"]), "--output", str(folder / "i"),
            "--part-size", "0"]


def other_part_size_on_resume(ws, folder):
    index = copy_index(ws, folder)
    for part in sorted(index.glob("*.part0000[2-4]*")):
        part.unlink()  # a partial index
    return ["encode", "--model", ws["retriever"], "--corpus", str(ws["beir"]), "--output", str(index),
            "--part-size", "10", "--keep-freed-memory", "false"]


def part_cut_in_half(ws, folder):
    index = copy_index(ws, folder)
    cut(index / "shard000-of-001.part00001.safetensors")
    return search(ws, index, folder)


def part_ids_truncated(ws, folder):
    index = copy_index(ws, folder)
    cut(index / "shard000-of-001.part00002.ids.json", 0.6)
    return search(ws, index, folder)


def manifest_damaged(ws, folder):
    index = copy_index(ws, folder)
    (index / "index.json").write_text('{"model": ')
    return search(ws, index, folder)


def manifest_without_fields(ws, folder):
    index = copy_index(ws, folder)
    (index / "index.json").write_text('{"model": "x", "shards": 1}')
    return search(ws, index, folder)


def unknown_judged_document_in_search(ws, folder):
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnowhere\t1\n")
    return search(ws, ws["index"], folder, "--qrels", str(folder / "qrels.tsv"))


def unknown_judged_document_in_evaluate(ws, folder):
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tnowhere\t1\n")
    (folder / "run.trec").write_text("q1 Q0 d1 1 2.0 x\nq2 Q0 d2 1 1.0 x\n")
    return ["evaluate", "--run", str(folder / "run.trec"), "--qrels", str(folder / "qrels.tsv"), "--corpus",
            str(ws["beir"])]


def malformed_run_line(ws, folder):
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (folder / "run.trec").write_text("q1 Q0 d1 1 2.0 x\nq1 d2 1 1.0\n")
    return ["evaluate", "--run", str(folder / "run.trec"), "--qrels", str(folder / "qrels.tsv")]


def export_of_truncated_weights(ws, folder):
    checkpoint = folder / "checkpoint"
    assert cli(["pretrain", "--model", ws["mlm"], "--data", ws["data"], "--output", str(checkpoint), "--max-steps",
                "1", "--report-to", "none", "--disable-tqdm", "true", "--bf16", "false",
                "--keep-freed-memory", "false"]) == 0
    cut(checkpoint / "model.safetensors")
    return ["export", str(checkpoint), str(folder / "export")]


CASES = [
    Case("prepare: a corpus with no document", empty_corpus, 2,
         "dupmae prepare: error: the corpus contains no non-empty document: <tmp>/empty.jsonl (0 empty, 0 malformed lines)"),
    Case("prepare: a malformed jsonl line", malformed_corpus_line, 2,
         "dupmae prepare: error: <tmp>/bad.jsonl:2: invalid JSON (Expecting ',' delimiter at column 1)"),
    Case("prepare --on-error skip: a truncated .jsonl.gz", truncated_gzip_skipped, 0,
         "warning: <tmp>/cut.jsonl.gz is damaged or truncated: read up to line 182 (182 documents); the rest of the "
         "file is lost"),
    Case("pretrain --max-steps -5", negative_max_steps, 2,
         "dupmae pretrain: error: --max-steps must be a positive number of steps, or -1 to train --num-train-epochs "
         "(got -5)"),
    Case("pretrain --per-device-train-batch-size 0", zero_batch_size, 2,
         "dupmae pretrain: error: --per-device-train-batch-size must be >= 1 (got 0)"),
    Case("pretrain --resume with no checkpoint", resume_without_checkpoint, 2,
         "dupmae pretrain: error: --resume: no checkpoint-* folder in <tmp>"),
    Case("encode --part-size 0", zero_part_size, 2,
         "dupmae encode: error: argument --part-size: must be >= 1, got 0"),
    Case("encode: resuming a partial index with another --part-size", other_part_size_on_resume, 2,
         "dupmae encode: error: <tmp>/index was encoded in parts of 7 documents, not 10: rerun with --part-size 7 "
         "to resume it, or encode into a new --output"),
    Case("search: an index part cut in half", part_cut_in_half, 2,
         "dupmae search: error: <tmp>/index/shard000-of-001.part00001.safetensors: index part is damaged or "
         "incomplete (Error while deserializing header: incomplete metadata, file not fully covered); rerun "
         "`dupmae encode` with the same settings to rewrite it"),
    Case("search: a part's id list truncated", part_ids_truncated, 2,
         "dupmae search: error: <tmp>/index/shard000-of-001.part00002.ids.json: index part's id list is damaged or "
         "incomplete JSON (Expecting value: line 1 column 30 (char 29)); rerun `dupmae encode` "
         "with the same settings to rewrite it"),
    Case("search: a damaged index.json", manifest_damaged, 2,
         "dupmae search: error: <tmp>/index/index.json: index manifest is damaged or incomplete JSON (Expecting "
         "value: line 1 column 11 (char 10)); encode the index again into a new --output"),
    Case("search: an index.json without its fields", manifest_without_fields, 2,
         "dupmae search: error: <tmp>/index/index.json: index manifest lacks representation, corpus; encode the "
         "index again into a new --output"),
    Case("search --qrels: a judged document that is in no index part", unknown_judged_document_in_search, 0,
         "<tmp>/qrels.tsv: 1 judged document id(s) (1 judgement(s)) are not in the index <tmp>/index, e.g. "
         "['nowhere']; they can never be retrieved and count as misses"),
    Case("evaluate --corpus: a judged document that is in no corpus", unknown_judged_document_in_evaluate, 0,
         "<tmp>/qrels.tsv: 1 judged document id(s) (1 judgement(s)) are not in <tmp>/beir/corpus.jsonl, e.g. "
         "['nowhere']; they can never be retrieved and count as misses"),
    Case("evaluate: a malformed run line", malformed_run_line, 2,
         "dupmae evaluate: error: <tmp>/run.trec:2: expected 6 fields (query_id Q0 doc_id rank score tag), got 4"),
    Case("export: a checkpoint whose weights are cut", export_of_truncated_weights, 2,
         "dupmae export: error: <tmp>/checkpoint/model.safetensors: weights file is damaged or incomplete (Error "
         "while deserializing header: incomplete metadata, file not fully covered); resume from an earlier "
         "checkpoint or rerun the step that wrote it"),
]


def run_case(case: Case, ws, folder: Path, capsys, caplog) -> tuple[int, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    argv = case.command(ws, folder)
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        status = cli(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines() + [record.getMessage() for record in caplog.records]
    replace = lambda text: text.replace(str(folder), "<tmp>").replace(str(ws["root"]), "<tmp>")
    return status, [replace(line) for line in lines]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_its_message(case, ws, tmp_path, capsys, caplog):
    status, lines = run_case(case, ws, tmp_path / "case", capsys, caplog)
    assert status == case.status, lines
    assert case.message in lines, "\n".join(lines)
    assert not any(line.startswith("Traceback") for line in lines)


def test_the_reliability_doc_lists_every_case_with_its_message():
    text = DOCS.read_text()
    for case in CASES:
        assert f"| {case.name} | {case.status} | ``{case.message}`` |" in text, case.name
