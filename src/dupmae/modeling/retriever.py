"""`Retriever`: encode queries and documents with a DupMAE (or cls / sparse) model, and search.

    retriever = Retriever.from_pretrained("runs/scifact-finetuned")
    results = retriever.search(queries, corpus, top_k=100)   # {qid: [(doc_id, score), ...]}

Batches are sorted by length (no padding waste); bf16 autocast is used when asked for.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig, load_tokenizer
from dupmae.retrieval.index import DocumentBlock, QueryBlock, TopK, block_scores


def document_text(document: dict | str) -> str:
    """BEIR documents are {"title", "text"}: title and text joined by a space, as BEIR baselines do."""
    if isinstance(document, str):
        return document
    title, text = document.get("title") or "", document.get("text") or ""
    return f"{title} {text}".strip() if title else text


class Retriever:
    def __init__(self, encoder: DupMAEEncoder, tokenizer, batch_size: int = 64, bf16: bool = False,
                 device: str | None = None, show_progress: bool = True) -> None:
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.bf16 = bf16
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.encoder.to(self.device)
        self.show_progress = show_progress

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: RepresentationConfig | None = None, **kwargs) -> "Retriever":
        return cls(DupMAEEncoder.from_pretrained(directory, config), load_tokenizer(directory), **kwargs)

    @property
    def config(self) -> RepresentationConfig:
        return self.encoder.representation

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def _encode(self, texts: list[str], max_length: int, top_k: int | None, description: str):
        """Yields (positions, Representation) per length-sorted batch."""
        lengths = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: memory peaks early
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc=description, disable=not self.show_progress, unit="batch"):
            tokens = self.tokenizer([texts[i] for i in batch], max_length=max_length, truncation=True, padding=True,
                                    return_special_tokens_mask=True, return_tensors="pt")
            with self._autocast():
                representation = self.encoder(
                    tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device),
                    tokens["special_tokens_mask"].to(self.device), top_k=top_k,
                )
            yield batch, representation

    def encode_queries(self, texts: list[str], ids: list[str] | None = None) -> QueryBlock:
        """Dense `[Q, D]` and full sparse `[Q, V]` vectors (queries keep every vocabulary entry)."""
        dense = sparse = None
        for positions, rep in self._encode(texts, self.config.query_max_length, None, "encoding queries"):
            if rep.dense is not None:
                dense = dense if dense is not None else np.zeros((len(texts), rep.dense.shape[1]), np.float32)
                dense[positions] = rep.dense.cpu().numpy()
            if rep.sparse is not None:
                sparse = sparse if sparse is not None else np.zeros((len(texts), rep.sparse.shape[1]), np.float32)
                sparse[positions] = rep.sparse.cpu().numpy()
        return QueryBlock(ids=list(ids) if ids is not None else [str(i) for i in range(len(texts))],
                          dense=dense, sparse=sparse)

    def encode_corpus(self, documents: list[dict | str], ids: list[str] | None = None) -> DocumentBlock:
        """Dense `[N, D]` and sparse top-k `(indices, values)` `[N, k]` per document."""
        texts = [document_text(d) for d in documents]
        k = self.config.sparse_top_k
        dense = indices = values = None
        for positions, rep in self._encode(texts, self.config.passage_max_length, None, "encoding documents"):
            if rep.dense is not None:
                dense = dense if dense is not None else np.zeros((len(texts), rep.dense.shape[1]), np.float32)
                dense[positions] = rep.dense.cpu().numpy()
            if rep.sparse is not None:
                top = rep.sparse.topk(min(k, rep.sparse.shape[1]), dim=-1)
                if indices is None:
                    indices = np.zeros((len(texts), top.indices.shape[1]), np.int32)
                    values = np.zeros((len(texts), top.indices.shape[1]), np.float32)
                indices[positions] = top.indices.cpu().numpy()
                values[positions] = top.values.cpu().numpy()
        return DocumentBlock(ids=list(ids) if ids is not None else [str(i) for i in range(len(texts))],
                             dense=dense, sparse_indices=indices, sparse_values=values)

    def search(self, queries: dict[str, str], corpus: dict[str, dict | str], top_k: int = 1000,
               exclude_self: bool = False) -> dict[str, list[tuple[str, float]]]:
        """Exact search of `queries` over an in-memory `corpus`: {qid: [(doc_id, score), ...]} best first."""
        query_ids, doc_ids = list(queries), list(corpus)
        query_block = self.encode_queries([queries[q] for q in query_ids], query_ids)
        documents = self.encode_corpus([corpus[d] for d in doc_ids], doc_ids)
        best = TopK(len(query_ids), top_k)
        best.add(block_scores(query_block, documents), doc_ids,
                 exclude=[{q} for q in query_ids] if exclude_self else None)
        return best.results(query_ids)
