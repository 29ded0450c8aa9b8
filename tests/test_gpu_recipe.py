"""scripts/gpu_recipe.py: the fp16 carry of the weights, the unpack back to fp32, and `collect`'s
relocated results and cut runs (the parts that run here; the device run itself needs the GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_recipe.py"


@pytest.fixture()
def gpu_recipe(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_recipe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STAGE", tmp_path / "stage")
    monkeypatch.setattr(module, "COLLECTIONS", ["tiny"])
    return module


def test_stage_then_unpack_restores_fp32_weights_within_fp16_rounding(gpu_recipe, tmp_path, wordpiece_dir):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    model_dir = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(wordpiece_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    collection = tmp_path / "data" / "tiny"
    (collection / "qrels").mkdir(parents=True)
    (collection / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"the cat sat on mat {i}"}) + "\n" for i in range(3)))
    (collection / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")

    gpu_recipe.stage(tmp_path / "data", model_dir, skip_wheels=True)
    half = load_file(str(gpu_recipe.STAGE / "minilm-fp16" / "model.safetensors"))
    assert {tensor.dtype for tensor in half.values()} == {torch.float16}
    assert (gpu_recipe.STAGE / "minilm-fp16" / "tokenizer.json").is_file()

    gpu_recipe.unpack()
    original = load_file(str(model_dir / "model.safetensors"))
    restored = load_file(str(gpu_recipe.STAGE / "minilm" / "model.safetensors"))
    assert restored.keys() == original.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == torch.float32
        assert torch.equal(restored[name], tensor.half().float()), name  # exactly the fp16 rounding, nothing else
    assert (gpu_recipe.STAGE / "data" / "tiny" / "qrels" / "test.tsv").read_text().endswith("q1\td1\t1\n")


def test_stage_refuses_an_fp16_copy_that_moves_embeddings(gpu_recipe, tmp_path, monkeypatch, wordpiece_dir):
    monkeypatch.setattr(gpu_recipe, "embedding_drift", lambda *args: 0.5)
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit, match="moves embeddings by 0.500"):
        gpu_recipe.stage(tmp_path / "data", tmp_path / "model", skip_wheels=True)


def test_collect_archives_each_seeds_results_reports_and_per_query_files(gpu_recipe, tmp_path):
    import tarfile

    run = tmp_path / "runs"
    (run / "stages" / "finetune-cls-abc").mkdir(parents=True)
    (run / "stages" / "finetune-cls-abc" / "test.trec").write_text("q1 Q0 d1 1 1.0 x\n")
    for seed in (42, 1):
        (run / f"results-s{seed}.json").write_text(json.dumps({"config": {"seed": seed}}))
        (run / f"report-s{seed}.md").write_text(f"# seed {seed}\n")
        (run / f"per_query-s{seed}.json").write_text("{}")
    (run / "results.json").write_text("{}")  # the latest seed's copy: not collected twice
    (run / "metrics.png").write_bytes(b"png")

    gpu_recipe.collect(run, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["runs-gpu.tar.gz"]
    with tarfile.open(tmp_path / "out" / "runs-gpu.tar.gz") as archive:
        assert sorted(archive.getnames()) == [f"runs-gpu/{name}" for name in sorted(
            ["metrics.png", "per_query-s1.json", "per_query-s42.json", "report-s1.md", "report-s42.md",
             "results-s1.json", "results-s42.json"])]
        assert archive.extractfile("runs-gpu/report-s1.md").read() == b"# seed 1\n"
