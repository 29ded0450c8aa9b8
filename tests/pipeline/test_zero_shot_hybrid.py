"""scripts/zero_shot_hybrid.py: its dense-only and sparse-only rows equal what the retriever's own
search gives with the `cls` and `sparse` representations; the weights in between mix the two."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from dupmae.data.beir import load_beir, load_qrels, load_queries
from dupmae.evaluation.metrics import evaluate
from dupmae.modeling.representation import RepresentationConfig
from dupmae.modeling.retriever import Retriever
from test_finetune import tiny_encoder_dir, write_beir

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "zero_shot_hybrid.py"


def test_end_rows_match_the_retriever_search(tmp_path, wordpiece_dir):
    spec = importlib.util.spec_from_file_location("zero_shot_hybrid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = tiny_encoder_dir(tmp_path / "model", wordpiece_dir)
    beir = write_beir(tmp_path / "beir")
    shutil.copy(beir / "qrels" / "train.tsv", beir / "qrels" / "test.tsv")
    corpus, queries = load_beir(str(beir), "test").corpus, load_queries(str(beir / "queries.jsonl"))
    qrels = load_qrels(str(beir / "qrels" / "test.tsv"))
    shared = dict(dense_dim=0, dense_pooling="mean", normalize_dense=True, sparse_activation="log1p_relu",
                  sparse_top_k=384, passage_max_length=128, query_max_length=64)

    def searched(representation):
        retriever = Retriever.from_pretrained(model, RepresentationConfig(representation=representation, **shared),
                                              show_progress=False)
        return evaluate(retriever.search({q: queries[q] for q in qrels}, corpus, top_k=100), qrels, module.METRICS)

    hybrid = Retriever.from_pretrained(model, RepresentationConfig(representation="dupmae", **shared), show_progress=False)
    table = module.hybrid_table(hybrid, corpus, queries, {"test": qrels}, weights=(0.0, 0.5))["test"]
    assert table["w=0.0"] == pytest.approx(searched("cls")["metrics"], abs=1e-9)
    assert table["sparse"] == pytest.approx(searched("sparse")["metrics"], abs=1e-9)
    assert table["w=0.0"] != table["sparse"]  # the two ends differ, so each comparison means something
    assert table["sparse_scale"] > 0 and set(table) == {"sparse_scale", "w=0.0", "w=0.5", "sparse"}
