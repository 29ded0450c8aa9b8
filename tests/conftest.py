"""Shared fixtures: tiny tokenizers and models built locally (tests never touch a hub)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest

from tiny import build_bpe_tokenizer, build_wordpiece_tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def allocator_calls(monkeypatch) -> list:
    """`keep_freed_memory` changes glibc's malloc for the whole process and for good: training
    and encoding commands under test record the call here instead (tests/test_allocator.py tests the real one
    in subprocesses)."""
    import dupmae.platform.cpu.allocator

    calls = []  # `dupmae.platform.prepare` imports it from its module at each call
    monkeypatch.setattr(dupmae.platform.cpu.allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    return calls


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("wordpiece"))
    build_wordpiece_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("bpe"))
    build_bpe_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def wordpiece_tokenizer(wordpiece_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(wordpiece_dir)


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_dir)
