"""`dupmae beir`: many collections, messy ones included; cached per (system, collection); its numbers are
`dupmae evaluate`'s on the same runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dupmae.cli import main as cli
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
from dupmae.pipeline.beir import BeirCollection, Settings, evaluate_collections
from dupmae.retrieval.encode import index_document_ids, index_parts
from dupmae.retrieval.trec import read_run
from test_finetune import tiny_encoder_dir, write_beir

METRICS = ["ndcg@10", "mrr@10", "recall@100"]


def write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def messy_collection(root: Path) -> Path:
    """The quirks of real collections: two empty documents, an unjudged empty query, a judged empty query,
    grade-0 judgements (one query has only those), queries no one judged."""
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", [
        {"_id": "a", "title": "alpha", "text": "protein folding in cells"},
        {"_id": "b", "title": "", "text": ""},
        {"_id": "c", "title": "river", "text": "the river flooded the old city"},
        {"_id": "d", "text": "   "},
        {"_id": "e", "title": "music", "text": "the band recorded an album"},
    ])
    write_jsonl(root / "queries.jsonl", [
        {"_id": "q1", "text": "protein folding"},
        {"_id": "q2", "text": ""},                 # empty, nobody judged it
        {"_id": "q3", "text": " "},                # empty, judged: scores 0
        {"_id": "q4", "text": "river flood"},
        {"_id": "q5", "text": "album by a band"},  # only a grade-0 judgement
        {"_id": "q6", "text": "unjudged query"},
    ])
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tc\t0\nq3\ta\t1\nq4\tc\t2\nq5\te\t0\n")
    return root


def plain_collection(root: Path) -> Path:
    write_beir(root)
    os.replace(root / "qrels" / "train.tsv", root / "qrels" / "test.tsv")
    return root


@pytest.fixture()
def setup(tmp_path, wordpiece_dir):
    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    config = RepresentationConfig(representation="dupmae", dense_dim=16, sparse_top_k=6, sparse_activation="relu")
    DupMAEEncoder.from_pretrained(start, config).save_pretrained(tmp_path / "retriever",
                                                                 AutoTokenizer.from_pretrained(start))
    return {"start": start, "retriever": str(tmp_path / "retriever"),
            "collections": [str(plain_collection(tmp_path / "words")), str(messy_collection(tmp_path / "messy"))]}


def run_beir(setup, output, *extra) -> int:
    return cli(["beir", "--systems", f"tiny={setup['retriever']}", "--bm25", "--hybrid-weight", "0.5",
                "--collections", *setup["collections"], "--output", str(output), "--top-k", "20",
                "--bf16", "false", "--part-size", "2", *extra])


def test_numbers_equal_dupmae_evaluate_on_the_same_runs(tmp_path, setup):
    output = tmp_path / "report"
    assert run_beir(setup, output) == 0
    results = json.loads((output / "results.json").read_text())
    assert list(results["systems"]) == ["BM25", "tiny", "tiny + BM25"]
    assert list(results["collections"]) == ["words", "messy"]
    for name, system in results["systems"].items():
        for collection, folder in zip(["words", "messy"], setup["collections"]):
            run = Path(system["runs"][collection]["folder"]) / "run.trec"
            summary = tmp_path / f"{name}-{collection}.json"
            assert cli(["evaluate", "--run", str(run), "--qrels", f"{folder}/qrels/test.tsv",
                        "--metrics", ",".join(METRICS), "--output", str(summary)]) == 0
            expected = json.loads(summary.read_text())["metrics"]
            assert system["collections"][collection] == pytest.approx(expected, abs=1e-12)
        for metric in METRICS:  # the average is the plain mean over collections
            values = [system["collections"][c][metric] for c in ("words", "messy")]
            assert system["average"][metric] == pytest.approx(sum(values) / 2)
    report = (output / "report.md").read_text()
    assert "| tiny + BM25 |" in report and "average" in report and (output / "ndcg10.png").is_file()


def test_messy_collection_quirks(tmp_path, setup):
    output = tmp_path / "report"
    assert run_beir(setup, output) == 0
    results = json.loads((output / "results.json").read_text())
    stats = results["collections"]["messy"]
    assert (stats["documents"], stats["empty_documents"]) == (5, 2)
    assert (stats["queries"], stats["empty_queries"], stats["judged_queries"], stats["searched_queries"],
            stats["judged_empty_queries"], stats["judged_without_relevant"]) == (6, 2, 4, 3, 1, 1)
    work = output / "collections" / "messy"
    assert index_document_ids(work / "tiny" / "index") == {"a", "b", "c", "d", "e"}  # empty documents indexed
    for system in ("BM25", "tiny", "tiny+BM25"):
        run = read_run(str(work / system / "run.trec"))
        assert set(run) <= {"q1", "q4", "q5"}  # never the empty or the unjudged queries
    per_query = (output / "per_query" / "messy" / "tiny.tsv").read_text().splitlines()
    assert per_query[0] == "query-id\t" + "\t".join(METRICS)
    rows = {line.split("\t")[0]: [float(v) for v in line.split("\t")[1:]] for line in per_query[1:]}
    assert set(rows) == {"q1", "q3", "q4", "q5"}  # every judged query, searched or not
    assert rows["q3"] == [0.0, 0.0, 0.0] and rows["q5"] == [0.0, 0.0, 0.0]
    assert rows["q1"][2] == 1.0 and rows["q4"][2] == 1.0  # 20 of 5 documents: every relevant one is found
    assert results["systems"]["tiny"]["collections"]["messy"]["recall@100"] == pytest.approx(0.5)


def test_a_rerun_is_cached_and_an_interrupted_one_resumes(tmp_path, setup, capsys):
    output = tmp_path / "report"
    assert run_beir(setup, output) == 0
    work = output / "collections" / "words" / "tiny"
    run_before = (work / "run.trec").read_bytes()
    parts = index_parts(work / "index")
    assert len(parts) == 15  # 30 documents, 2 a part
    capsys.readouterr()
    assert run_beir(setup, output) == 0
    results = json.loads((output / "results.json").read_text())
    assert all(run["cached"] for name, system in results["systems"].items() if " + " not in name
               for run in system["runs"].values())  # hybrids are fused again from the cached runs (milliseconds)
    assert "words: tiny ... cached" in capsys.readouterr().err
    # Interrupted while encoding: the last parts and the run are missing; the rest is kept.
    stamps = {part: part.stat().st_mtime_ns for part in parts[:10]}
    for part in parts[10:]:
        part.unlink()
    (work / "done.json").unlink()
    (work / "run.trec").unlink()
    assert run_beir(setup, output) == 0
    assert {part: part.stat().st_mtime_ns for part in parts[:10]} == stamps  # not encoded again
    assert len(index_parts(work / "index")) == 15
    assert (work / "run.trec").read_bytes() == run_before


def test_another_model_under_the_same_name_is_run_again(tmp_path, setup, wordpiece_dir):
    output = tmp_path / "report"
    assert run_beir(setup, output) == 0
    first = json.loads((output / "results.json").read_text())["systems"]["tiny"]["collections"]["words"]
    config = RepresentationConfig(representation="cls", dense_dim=0, dense_pooling="mean", normalize_dense=True)
    DupMAEEncoder.from_pretrained(setup["start"], config).save_pretrained(setup["retriever"] + "-2",
                                                                          AutoTokenizer.from_pretrained(setup["start"]))
    setup = {**setup, "retriever": setup["retriever"] + "-2"}
    assert run_beir(setup, output) == 0
    results = json.loads((output / "results.json").read_text())
    assert not results["systems"]["tiny"]["runs"]["words"]["cached"]
    assert results["systems"]["BM25"]["runs"]["words"]["cached"]
    assert results["systems"]["tiny"]["collections"]["words"] != first


def test_an_encoder_folder_is_wrapped_zero_shot(tmp_path, setup):
    output = tmp_path / "report"
    assert cli(["beir", "--systems", f"start={setup['start']}", "--collections", setup["collections"][0],
                "--output", str(output), "--bf16", "false"]) == 0
    wrapped = RepresentationConfig.load(output / "models" / "start")
    assert (wrapped.representation, wrapped.dense_pooling, wrapped.normalize_dense) == ("cls", "mean", True)
    results = json.loads((output / "results.json").read_text())
    assert list(results["systems"]) == ["start"] and "zero-shot" in results["systems"]["start"]["label"]


@pytest.mark.parametrize("arguments, message", [
    (["--collections", "{words}"], "nothing to evaluate"),
    (["--systems", "x={retriever}", "--hybrid-weight", "0.5", "--collections", "{words}"], "needs --bm25"),
    (["--bm25", "--hybrid-weight", "1.5", "--collections", "{words}"], "must be in [0, 1]"),
    (["--systems", "no-equals-sign", "--collections", "{words}"], "expected NAME=MODEL_DIR"),
    (["--systems", "BM25={retriever}", "--collections", "{words}"], "a name is letters"),
    (["--systems", "x=/no/such/model", "--collections", "{words}"], "not a Hugging Face model folder"),
    (["--bm25", "--collections", "/no/such/folder"], "is not a folder"),
    (["--bm25"], "no collections"),
    (["--bm25", "--collections", "{words}", "--split", "dev"], "missing"),
    (["--bm25", "--collections", "{words}", "--metrics", "ndcg@0"], "cutoff must be a positive integer"),
])
def test_bad_input_is_a_clear_error(tmp_path, setup, capsys, arguments, message):
    paths = {"words": setup["collections"][0], "retriever": setup["retriever"]}
    arguments = [argument.format(**paths) for argument in arguments]
    assert cli(["beir", *arguments, "--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("folders", [{"a": "same", "b": "same"}, {"a": "BM25"}, {"a": "../escape"}, {"a": "x+BM25"}])
def test_work_folders_must_be_unique_plain_names(tmp_path, setup, folders):
    collection = BeirCollection("words", Path(setup["collections"][0]), "test")
    systems = {"a": setup["retriever"], "b": setup["retriever"]}
    with pytest.raises(ValueError, match="work folders must be unique names"):
        evaluate_collections(systems, [collection], tmp_path / "out", Settings(), bm25=True, folders=folders)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_malformed_line_is_an_error_naming_file_and_line(tmp_path, setup, capsys):
    messy = Path(setup["collections"][1])
    with open(messy / "corpus.jsonl", "a") as handle:
        handle.write('{"_id": "z", "text": 3}\n')
    assert cli(["beir", "--bm25", "--collections", str(messy), "--output", str(tmp_path / "out")]) == 2
    assert f"{messy / 'corpus.jsonl'}:6:" in capsys.readouterr().err


def test_download_without_network_says_what_to_put_where(tmp_path, monkeypatch, capsys):
    import urllib.request

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert cli(["beir", "--bm25", "--download", "nfcorpus", "--data-root", str(tmp_path / "data"),
                "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "nfcorpus.zip" in error and "md5 a89dba18a62ef92f7d323ec890a0d38d" in error and str(tmp_path / "data") in error
