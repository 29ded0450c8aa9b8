"""Tiny tokenizers built locally for tests (importable as `tiny`; conftest.py exposes them as fixtures)."""

from __future__ import annotations

WORDS = (
    "the a of and to in is was for on with as by at from that this which protein cell cells gene genes "
    "expression cancer tumor patients study studies results increased decreased levels role human mouse "
    "blood brain heart disease risk treatment effect effects clinical trial data analysis model receptor "
    "signaling pathway immune response infection virus bacteria drug dose years age women men children "
    "water river city king war music film album born played team season league university school "
    "science history language book world first new one two three"
).split()
SUBWORDS = ["##s", "##ed", "##ing", "##ly", "##er", "##al", "##ion", "##ic", "##e", "##a", "##o", "##i", "##n", "##t"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?()-'\"")


def build_wordpiece_tokenizer(directory: str):
    """A BERT-style WordPiece fast tokenizer with a ~200-entry vocabulary, saved to `directory`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_list = specials + LETTERS + ["##" + c for c in LETTERS] + WORDS + SUBWORDS
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece()
    tokenizer = BertTokenizerFast(tokenizer_object=backend, model_max_length=512, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_bpe_tokenizer(directory: str):
    """A RoBERTa-style byte-level BPE fast tokenizer (no '##' markers), trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>"))
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=512,
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous in multi-process tests)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_gloo_processes(arguments: list[str], env: dict, output: "Path | None" = None, timeout: float = 240) -> None:
    """`torchrun --nproc_per_node 2 ARGUMENTS` with a time limit and one retry.

    Why: about one run in a few hundred, one gloo rank hangs in process-group teardown after the
    other has exited (seen once in CI, transformers 5.0; docs/bugs-and-fixes.md). A hang is retried once
    on a fresh port, after removing `output`; a failure (non-zero exit) is never retried.
    """
    import shutil
    import subprocess
    import sys

    for attempt in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(free_port()), *arguments]
        process = subprocess.Popen(command, env=env)
        try:
            if process.wait(timeout=timeout):
                raise subprocess.CalledProcessError(process.returncode, command)
            return
        except subprocess.TimeoutExpired:
            # SIGTERM first: torchrun passes it on to its worker ranks (they run in sessions of their
            # own, and a SIGKILL of torchrun alone left a hung rank running)
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if attempt == 2:
                raise
            if output is not None:
                shutil.rmtree(output, ignore_errors=True)
