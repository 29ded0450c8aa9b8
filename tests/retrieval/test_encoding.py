"""Encoding: token-length-sorted batches (order restored, padding-independent vectors), oneDNN
linears (same numbers as plain PyTorch), and N shard processes writing one index."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import dupmae.modeling.retriever as retriever_module

from dupmae.platform.cpu.onednn import matmul_transposed, onednn_available, onednn_linears
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
from dupmae.modeling.retriever import Retriever, length_sorted_batches, pad_batch
from dupmae.retrieval.encode import index_parts
from dupmae.retrieval.trec import read_run
from test_finetune import tiny_encoder_dir, write_beir

TEXTS = ["protein", "the cancer study of human cells", "gene expression in mouse brain cells and blood",
         "river", "a b c d e f g", "immune response to virus infection in children", "", "data analysis"]


@pytest.fixture()
def tiny_retriever_dir(tmp_path, wordpiece_dir) -> str:
    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    config = RepresentationConfig(representation="dupmae", dense_dim=16, sparse_top_k=6, sparse_activation="relu")
    DupMAEEncoder.from_pretrained(start, config).save_pretrained(tmp_path / "retriever", AutoTokenizer.from_pretrained(start))
    return str(tmp_path / "retriever")


def test_length_sorted_batches_and_padding():
    assert length_sorted_batches([3, 5, 5, 1, 4], 2) == [[1, 2], [4, 0], [3]]  # longest first, ties in input order
    padded = pad_batch([[2, 7, 3], [2, 3]], [[1, 0, 1], [1, 1]], pad_id=0)
    assert padded["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded["special_tokens_mask"].tolist() == [[1, 0, 1], [1, 1, 1]]


def test_batched_encoding_equals_one_text_at_a_time_in_input_order(tiny_retriever_dir, monkeypatch):
    monkeypatch.setattr(retriever_module, "TOKENIZE_WINDOW_BATCHES", 1)  # windows of 3 texts: several windows
    batched = Retriever.from_pretrained(tiny_retriever_dir, batch_size=3, show_progress=False)
    alone = Retriever.from_pretrained(tiny_retriever_dir, batch_size=1, show_progress=False, onednn=False)
    widths = []
    forward = batched.encoder.forward

    def spy(input_ids, attention_mask, *args, **kwargs):
        widths.append((input_ids.shape[1], attention_mask.sum(1).tolist()))
        return forward(input_ids, attention_mask, *args, **kwargs)

    monkeypatch.setattr(batched.encoder, "forward", spy)
    together = batched.encode_corpus(TEXTS)
    one_by_one = alone.encode_corpus(TEXTS)
    np.testing.assert_allclose(together.dense, one_by_one.dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.sort(together.sparse_indices, 1), np.sort(one_by_one.sparse_indices, 1))
    np.testing.assert_allclose(np.sort(together.sparse_values, 1), np.sort(one_by_one.sparse_values, 1),
                               rtol=1e-4, atol=1e-5)
    # every batch is padded to its own longest text (windows of 3 texts: 3 batches)
    assert len(widths) == 3
    assert all(width == max(lengths) for width, lengths in widths)
    assert all(lengths == sorted(lengths, reverse=True) for _, lengths in widths)
    queries = batched.encode_queries(TEXTS)
    np.testing.assert_allclose(queries.sparse, alone.encode_queries(TEXTS).sparse, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")
def test_onednn_linears_compute_what_plain_pytorch_computes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 8, bias=False))
    inputs = torch.randn(3, 5, 24)
    with torch.no_grad():
        plain = model(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_bf16 = model(inputs)
    with onednn_linears(model) as swapped, torch.no_grad():
        assert swapped == 2
        fast = model(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_bf16 = model(inputs)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert fast_bf16.dtype == plain_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(fast_bf16.float(), plain_bf16.float(), rtol=1e-2, atol=1e-2)
    with onednn_linears(model):  # with gradients on, the layers are the ordinary ones
        model(inputs).sum().backward()
    assert model[0].weight.grad is not None
    assert all("forward" not in layer.__dict__ for layer in model)  # restored after the block
    left, right = torch.randn(4, 6), torch.randn(9, 6)
    with torch.no_grad():
        torch.testing.assert_close(matmul_transposed(left, right), left @ right.T, rtol=1e-5, atol=1e-5)


def test_shards_encoded_by_concurrent_processes_are_merged_by_search(tmp_path, tiny_retriever_dir):
    beir = write_beir(tmp_path / "beir")
    index = tmp_path / "index"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    processes = [subprocess.Popen([sys.executable, "-m", "dupmae.cli", "encode", "--model", tiny_retriever_dir,
                                   "--corpus", str(beir), "--output", str(index), "--shard", f"{shard}/2",
                                   "--part-size", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for shard in range(2)]  # started together: they race for index.json and the folder
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output.decode()
    assert len(index_parts(index)) == 8  # 15 documents per shard in parts of 4
    assert not list(index.glob("*.tmp"))

    from dupmae.cli import main as cli

    run = tmp_path / "run.trec"
    assert cli(["search", "--model", tiny_retriever_dir, "--index", str(index), "--queries",
                str(beir / "queries.jsonl"), "--top-k", "30", "--output", str(run)]) == 0
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(line)["_id"]: json.loads(line)["text"]
               for line in (beir / "queries.jsonl").read_text().splitlines()}
    in_memory = Retriever.from_pretrained(tiny_retriever_dir, show_progress=False).search(queries, corpus, top_k=30)
    from_index = read_run(str(run))
    for query_id, hits in in_memory.items():
        assert len(hits) == 30  # every document of every shard was searched
        assert list(from_index[query_id]) == [doc for doc, _ in hits]
        np.testing.assert_allclose(list(from_index[query_id].values()), [s for _, s in hits], rtol=1e-5)
