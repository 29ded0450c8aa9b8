"""Fine-tuning: the contrastive loss by hand, representation round trips, and 2 gloo processes vs 1."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from dupmae.modeling.representation import DupMAEEncoder, Representation, RepresentationConfig, keep_top_k, score
from dupmae.modeling.retriever import Retriever
from dupmae.retrieval.index import DocumentBlock, QueryBlock, TopK, block_scores
from dupmae.training.contrastive import contrastive_loss
from tiny import run_two_gloo_processes

HERE = Path(__file__).parent


def test_contrastive_loss_by_hand_with_hard_negatives():
    # 2 queries, groups of 2 (positive first): passages p0+ p0- p1+ p1-
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    loss, accuracy = contrastive_loss(Representation(q, None), Representation(p, None), group_size=2)
    # query 0 scores: [2, 1, 0, 1] target column 0; query 1: [0, 1, 3, 0] target column 2
    l0 = -2 + math.log(math.exp(2) + math.exp(1) + 1 + math.exp(1))
    l1 = -3 + math.log(1 + math.exp(1) + math.exp(3) + 1)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert accuracy.item() == 1.0
    halved, _ = contrastive_loss(Representation(q, None), Representation(p, None), group_size=2, temperature=2.0)
    expected = (-1 + math.log(math.exp(1) + math.exp(0.5) + 1 + math.exp(0.5))
                - 1.5 + math.log(1 + math.exp(0.5) + math.exp(1.5) + 1)) / 2
    assert halved.item() == pytest.approx(expected, rel=1e-6)


def test_score_adds_dense_and_sparse_inner_products():
    queries = Representation(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0, 2.0]]))
    passages = Representation(torch.tensor([[3.0, 1.0]]), torch.tensor([[5.0, 1.0, 1.0]]))
    assert score(queries, passages).item() == pytest.approx(5.0 + 3.0)
    assert keep_top_k(torch.tensor([[0.1, 5.0, -1.0, 3.0]]), 2).tolist() == [[0.0, 5.0, 0.0, 3.0]]


def test_sparse_top_k_scoring_matches_brute_force():
    rng = np.random.default_rng(0)
    vocab, k = 50, 7
    doc_full = rng.normal(size=(20, vocab)).astype(np.float32)
    top = np.argsort(-doc_full, axis=1)[:, :k]
    values = np.take_along_axis(doc_full, top, 1)
    docs = DocumentBlock([f"d{i}" for i in range(20)], rng.normal(size=(20, 4)).astype(np.float32),
                         top.astype(np.int32), values)
    queries = QueryBlock(["a", "b", "c"], rng.normal(size=(3, 4)).astype(np.float32),
                         rng.normal(size=(3, vocab)).astype(np.float32))
    brute = np.zeros((3, 20), dtype=np.float32)
    for qi in range(3):
        for di in range(20):
            brute[qi, di] = queries.dense[qi] @ docs.dense[di] + sum(
                queries.sparse[qi, t] * doc_full[di, t] for t in top[di])
    assert np.allclose(block_scores(queries, docs), brute, atol=1e-4)
    # running top-k over two shards equals top-k over everything
    best = TopK(3, 5)
    first, second = DocumentBlock(docs.ids[:9], docs.dense[:9], top[:9].astype(np.int32), values[:9]), \
        DocumentBlock(docs.ids[9:], docs.dense[9:], top[9:].astype(np.int32), values[9:])
    best.add(block_scores(queries, first), first.ids)
    best.add(block_scores(queries, second), second.ids)
    for qi, hits in enumerate(best.results(queries.ids).values()):
        expected = [docs.ids[j] for j in np.argsort(-brute[qi])[:5]]
        assert [d for d, _ in hits] == expected


def tiny_encoder_dir(root: Path, tokenizer_dir: str) -> str:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForMaskedLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def write_beir(root: Path) -> Path:
    from tiny import WORDS

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, size=12)) for i in range(30)}
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs.items()))
    queries = {f"q{i}": " ".join(docs[f"d{i}"].split()[:4]) for i in range(16)}
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(16)))
    negatives = [{"query_id": f"q{i}", "positives": [f"d{i}"], "negatives": [f"d{(i + j) % 30}" for j in range(1, 6)]}
                 for i in range(16)]
    (root / "negs.jsonl").write_text("".join(json.dumps(n) + "\n" for n in negatives))
    return root


@pytest.mark.parametrize("representation", ["dupmae", "cls", "sparse"])
def test_save_load_encode_round_trip(tmp_path, wordpiece_dir, representation):
    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    config = RepresentationConfig(representation=representation, dense_dim=16, sparse_top_k=10,
                                  sparse_activation="log1p_relu")
    encoder = DupMAEEncoder.from_pretrained(start, config)
    tokenizer = AutoTokenizer.from_pretrained(start)
    encoder.save_pretrained(tmp_path / "saved", tokenizer)
    texts = ["the protein increased in mouse cells", "cancer study"]
    a = Retriever(encoder, tokenizer, show_progress=False).encode_corpus(texts)
    reloaded = Retriever.from_pretrained(tmp_path / "saved", show_progress=False)
    assert reloaded.config == config  # the representation settings travel with the weights
    b = reloaded.encode_corpus(texts)
    for name in ("dense", "sparse_indices", "sparse_values"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or np.array_equal(x, y)), name
    with pytest.raises(ValueError, match="cannot be re-read"):
        DupMAEEncoder.from_pretrained(tmp_path / "saved", RepresentationConfig(representation="cls"))


def test_two_gloo_processes_give_the_gradient_of_one_process(tmp_path, wordpiece_dir):
    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    write_beir(tmp_path / "beir")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    script = HERE / "helpers" / "finetune_gradients.py"
    subprocess.run([sys.executable, str(script), start, str(tmp_path / "beir"), str(tmp_path / "one.pt"), "4"],
                   check=True, env=env)
    run_two_gloo_processes([str(script), start, str(tmp_path / "beir"), str(tmp_path / "two.pt"), "2"], env)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert one["grads"].keys() == two["grads"].keys()
    for name in one["grads"]:  # equal up to float32 summation order
        a, b = one["grads"][name], two["grads"][name]
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()) + 1e-9, rtol=1e-4), name


def test_finetune_cli_end_to_end(tmp_path, wordpiece_dir):
    from dupmae.cli import main as cli

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    beir = write_beir(tmp_path / "beir")
    output = tmp_path / "ft"
    assert cli(["finetune", "--model", start, "--data", str(beir), "--negatives", str(beir / "negs.jsonl"),
                "--output", str(output), "--group-size", "3", "--per-device-train-batch-size", "4",
                "--max-steps", "3", "--logging-steps", "1", "--dense-dim", "16", "--sparse-top-k", "8",
                "--learning-rate", "1e-3", "--report-to", "none", "--disable-tqdm", "true"]) == 0
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_accuracy" in r] == [1, 2, 3]
    retriever = Retriever.from_pretrained(output, show_progress=False)
    assert retriever.config.dense_dim == 16 and retriever.config.sparse_top_k == 8
    results = retriever.search({"q0": "the protein"}, {"d0": {"title": "", "text": "the protein"}, "d1": "cancer"}, top_k=2)
    assert [d for d, _ in results["q0"]] and len(results["q0"]) == 2


def test_finetune_resume_matches_uninterrupted(tmp_path, wordpiece_dir):
    from transformers import TrainerCallback

    from dupmae.training.finetune import finetune, parse_arguments

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    beir = write_beir(tmp_path / "beir")

    def flags(output):
        return ["--model", start, "--data", str(beir), "--negatives", str(beir / "negs.jsonl"), "--output", str(output),
                "--group-size", "3", "--per-device-train-batch-size", "4", "--max-steps", "4", "--save-strategy", "steps",
                "--save-steps", "2", "--dense-dim", "16", "--sparse-top-k", "8", "--learning-rate", "1e-3",
                "--report-to", "none", "--disable-tqdm", "true"]

    finetune(*parse_arguments(flags(tmp_path / "straight")))
    finetune(*parse_arguments(flags(tmp_path / "resumed")), callbacks=[StopAt()])
    finetune(*parse_arguments([*flags(tmp_path / "resumed"), "--resume"]))
    a = Retriever.from_pretrained(tmp_path / "straight", show_progress=False).encode_corpus(["the protein study"])
    b = Retriever.from_pretrained(tmp_path / "resumed", show_progress=False).encode_corpus(["the protein study"])
    assert np.allclose(a.dense, b.dense, atol=1e-5) and np.array_equal(a.sparse_indices, b.sparse_indices)


def test_sparse_weight_scales_the_sparse_term_of_the_score(tmp_path, wordpiece_dir):
    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    tokenizer = AutoTokenizer.from_pretrained(start)
    batch = tokenizer(["the protein increased in mouse cells", "cancer study"], padding=True, return_tensors="pt",
                      return_special_tokens_mask=True)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  special_tokens_mask=batch["special_tokens_mask"])
    plain_config = RepresentationConfig(dense_dim=16, sparse_activation="relu")
    weighted_config = RepresentationConfig(dense_dim=16, sparse_activation="relu", sparse_weight=0.25)
    plain = DupMAEEncoder.from_pretrained(start, plain_config).eval()
    weighted = DupMAEEncoder(plain.model, weighted_config).eval()
    weighted.dense_projection.load_state_dict(plain.dense_projection.state_dict())
    with torch.no_grad():
        a, b = plain(**inputs, top_k=5), weighted(**inputs, top_k=5)
    torch.testing.assert_close(b.sparse, 0.5 * a.sparse)
    torch.testing.assert_close(score(b, b), a.dense @ a.dense.T + 0.25 * (a.sparse @ a.sparse.T))
    with pytest.raises(ValueError, match="sparse_weight"):
        RepresentationConfig(sparse_weight=0.0)


@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_finetune_cpu_kernel_switches(tmp_path, wordpiece_dir, cpu_kernels, allocator_calls):
    """`--lean-attention` / `--fast-dropout` / `--keep-freed-memory` (default on) swap the attention
    function and the dropout modules of the trained encoder and set glibc's malloc; off, it keeps
    SDPA, `nn.Dropout` and the allocator. Either way the saved model loads without them (the
    attention choice is not written to config.json)."""
    from torch import nn

    from dupmae.platform.cpu.fast_dropout import FastDropout
    from dupmae.training.finetune import finetune, parse_arguments

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    beir = write_beir(tmp_path / "beir")
    switches = [] if cpu_kernels else ["--lean-attention", "false", "--fast-dropout", "false",
                                       "--keep-freed-memory", "false"]
    trainer = finetune(*parse_arguments([
        "--model", start, "--data", str(beir), "--negatives", str(beir / "negs.jsonl"), "--output", str(tmp_path / "ft"),
        "--group-size", "3", "--per-device-train-batch-size", "4", "--max-steps", "1", "--report-to", "none",
        "--disable-tqdm", "true", *switches]))
    encoder = trainer.model
    dropouts = [type(m) for m in encoder.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and set(dropouts) == {FastDropout if cpu_kernels else nn.Dropout}
    assert len(allocator_calls) == (1 if cpu_kernels else 0)
    assert encoder.model.config._attn_implementation == ("dupmae_lean" if cpu_kernels else "sdpa")
    assert "dupmae_lean" not in (tmp_path / "ft" / "config.json").read_text()
    Retriever.from_pretrained(tmp_path / "ft", show_progress=False).encode_corpus(["the protein study"])
