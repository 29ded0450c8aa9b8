"""A tiny BEIR collection shared by the BM25, mining and CLI tests (imported as `tiny_beir`).

Not a conftest.py: existing tests do `from conftest import ...`, which a second conftest module would shadow.
"""

from __future__ import annotations

import json

DOCUMENTS = {
    "d1": ("Protein folding", "Proteins fold into three-dimensional structures."),
    "d2": ("River flooding", "The river flooded the city after heavy rain."),
    "d3": ("Cancer immunotherapy", "Immune checkpoint inhibitors treat tumors in patients."),
    "d4": ("Music history", "The album was recorded by the band in 1969."),
    "d5": ("", "Gene expression in mouse brain cells."),
    "d6": ("Dietary protein", "Protein intake affects muscle growth in older adults."),
}
QUERIES = {
    "q1": "protein structures",
    "q2": "tumor immune therapy",
    "q3": "flooding of rivers",
    "q4": "the of and",  # only stopwords: BM25 matches nothing
}
TRAIN_QRELS = [("q1", "d1", 1), ("q2", "d3", 1), ("q3", "d2", 1)]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def write_qrels(path, rows) -> str:
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows), encoding="utf-8")
    return str(path)


def make_beir_folder(tmp_path) -> str:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/train.tsv`` of the collection above under `tmp_path`."""
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, (t, x) in DOCUMENTS.items()])
    write_jsonl(folder / "queries.jsonl", [{"_id": i, "text": x, "metadata": {}} for i, x in QUERIES.items()])
    write_qrels(folder / "qrels" / "train.tsv", TRAIN_QRELS)
    return str(folder)


def tiny_corpus() -> dict[str, dict[str, str]]:
    return {doc_id: {"title": title, "text": text} for doc_id, (title, text) in DOCUMENTS.items()}
