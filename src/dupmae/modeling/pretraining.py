"""DupMAE pre-training model: encoder MLM + [CLS] decoding + bag-of-words losses (DUPMAE.md §1).

The model returns *sums and counts* of every loss term rather than means, so
that the trainer can normalise by counts gathered across all processes: with
DDP the gradient then equals the gradient of a single process on the whole
global batch (tested with 2 gloo processes). The vocabulary-sized logits are computed a chunk
at a time unless `lean_losses` is off (`dupmae.modeling.lean_losses`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PreTrainedModel

from dupmae.config import PretrainingOptions
from dupmae.modeling.checkpointing import DelegatesCheckpointing
from dupmae.modeling.decoder import EnhancedDecoderLayer
from dupmae.modeling.heads import (
    SplitMLMHead,
    embedding_module,
    mlm_head_name,
    split_if_exact,
)
from dupmae.modeling.lean_losses import chunked_max_pool_logits, fused_linear_cross_entropy
from dupmae.modeling.persistence import WEIGHTS_FILE, deduplicated_state_dict, load_weights, save_weights

OPTIONS_FILE = "dupmae_pretraining.json"
TERMS = ("encoder_mlm", "decoder", "bow")


@dataclass
class PretrainingOutput:
    """Per-batch sums and counts (all scalar tensors); `*_sum` carry gradients, counts do not.

    encoder_mlm: cross-entropy summed over encoder-masked tokens, count = masked tokens.
    decoder: cross-entropy summed over reconstructed ordinary tokens, count = those tokens.
    bow: per-sequence BoW loss summed over sequences, count = sequences.
    *_correct: arg-max hits, for the MLM accuracies.
    """

    encoder_mlm_sum: torch.Tensor
    encoder_mlm_count: torch.Tensor
    encoder_mlm_correct: torch.Tensor
    decoder_sum: torch.Tensor
    decoder_count: torch.Tensor
    decoder_correct: torch.Tensor
    bow_sum: torch.Tensor
    bow_count: torch.Tensor


def bow_loss_per_sequence(
    pooled_logits: torch.Tensor, original_input_ids: torch.Tensor, ordinary_mask: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Bag-of-words loss of each sequence.

    `-(sum over distinct ordinary tokens t of the original input: w * log softmax(mu)[t])`, with
    `w = 1 / (number of ordinary tokens, repeats counted)` for reduction 'per_token' (released code)
    or `w = 1` for 'sum' (paper).

    Args:
        pooled_logits: `[B, V]` the max-pooled vocabulary logits `mu`.
        original_input_ids: `[B, L]` unmasked input ids.
        ordinary_mask: `[B, L]` bool, True at ordinary tokens.
    Returns:
        `[B]` loss per sequence.
    """
    log_probs = F.log_softmax(pooled_logits.float(), dim=-1)  # [B, V]
    target = torch.zeros_like(log_probs).scatter_reduce_(
        1, original_input_ids.masked_fill(~ordinary_mask, 0), ordinary_mask.float(), reduce="amax"
    )  # [B, V] multi-hot of the distinct ordinary tokens
    loss = -(target * log_probs).sum(dim=-1)  # [B]
    if reduction == "per_token":
        loss = loss / ordinary_mask.sum(dim=1).clamp(min=1)
    return loss


def bow_pool(token_logits: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    """Max over the allowed positions: `[B, L, V]`, `[B, L]` bool -> `[B, V]`.

    The naive path (`lean_losses=False`) and the reference of `chunked_max_pool_logits`, which
    gives the same from the head-transformed states without the `[B, L, V]` logits."""
    return token_logits.masked_fill(~pool_mask[:, :, None], float("-inf")).max(dim=1).values


class DupMAEForPretraining(DelegatesCheckpointing, nn.Module):
    """An `AutoModelForMaskedLM` encoder plus the DupMAE decoder and losses.

    The MLM head is the encoder's own (shared by the encoder MLM, the decoder and the
    BoW losses); the decoder is one fresh `EnhancedDecoderLayer`. With `options.lean_losses`
    the head is used split (`transform`, then the tied projection) so that the vocabulary logits
    are only ever computed a chunk at a time (`dupmae.modeling.lean_losses`).
    """

    def __init__(self, encoder: PreTrainedModel, options: PretrainingOptions) -> None:
        super().__init__()
        self.encoder = encoder
        self.options = options
        self._head_name = mlm_head_name(encoder)  # the head stays registered under the encoder only
        embedding_module(encoder)  # fail early on an unsupported architecture
        self.decoder = EnhancedDecoderLayer(encoder.config) if options.uses_decoder else None
        self._head_splits: bool | None = None  # lean_losses: does the head split exactly? (checked once)
        self.linear_cross_entropy = fused_linear_cross_entropy  # the platform may give a fused device kernel
        self.materialise_bow = False

    def set_vocabulary_kernels(self, linear_cross_entropy=None, materialise_bow: bool = False) -> None:
        """Set by `dupmae.platform.prepare`: `linear_cross_entropy(x [T, d], weight [V, d], bias [V],
        targets [T], chunk_size) -> (loss sum, arg-max hits)` for the lean cross-entropies (None = dupmae's
        chunked `fused_linear_cross_entropy`), and whether the lean BoW max-pool computes its `[B, L, V]`
        logits at once (autograd's max) instead of a chunk of positions at a time."""
        self.linear_cross_entropy = linear_cross_entropy or fused_linear_cross_entropy
        self.materialise_bow = materialise_bow

    def checkpointed_model(self) -> PreTrainedModel:
        return self.encoder

    @property
    def head(self) -> nn.Module:
        return getattr(self.encoder, self._head_name)

    @property
    def embeddings(self) -> nn.Module:
        return embedding_module(self.encoder)

    def lean_head(self) -> SplitMLMHead | None:
        """The head split for the lean losses, or None (option off, or a head that does not split)."""
        if not self.options.lean_losses:
            return None
        first_check = self._head_splits is None
        split, self._head_splits = split_if_exact(self.head, self._head_splits)
        if first_check and split is None:
            warnings.warn(f"the MLM head {type(self.head).__name__} does not split into transform + "
                          "projection; using the naive full-logits losses (more memory)", stacklevel=2)
        return split

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        original_input_ids: torch.Tensor,
        ordinary_mask: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        """Shapes as produced by `PretrainingCollator` (B sequences, L positions, V vocabulary).

        `input_ids`, `attention_mask`, `original_input_ids`: `[B, L]`; `labels`: `[B, L]`, -100 at
        unmasked positions; `ordinary_mask`: `[B, L]` bool; `decoder_attention_mask`: `[B, L, L]` bool.

        With `lean_losses` (default) no `[B, L, V]` or `[T, V]` logits are kept: the head is split
        into `transform` and the tied projection, the BoW max-pool runs over chunks of positions
        (`chunked_max_pool_logits`) and the cross-entropies over chunks of rows
        (`fused_linear_cross_entropy`); values and gradients equal the naive path's.
        """
        options = self.options
        hidden = self.encoder.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, d]
        masked = labels != -100  # [B, L]
        encoder_labels = labels[masked]  # [M]
        zero = hidden.new_zeros(())
        head = self.lean_head()
        bow_sum, bow_count = zero, zero

        if head is None:  # naive: full logits
            if options.uses_bow:
                token_logits = self.head(hidden)  # [B, L, V]: the BoW max-pool needs every position
                encoder_logits = token_logits[masked]  # [M, V]
                pool_mask, has_position = self._pool_mask(attention_mask, ordinary_mask, masked)
                pooled = bow_pool(token_logits, pool_mask)  # [B, V]
                bow_sum, bow_count = self._bow(pooled, has_position, original_input_ids, ordinary_mask)
            else:
                encoder_logits = self.head(hidden[masked])  # [M, V]: only masked positions are scored
            encoder_sum = F.cross_entropy(encoder_logits.float(), encoder_labels, reduction="sum")
            encoder_correct = (encoder_logits.argmax(-1) == encoder_labels).sum()
        else:  # lean: transformed states [.., d], logits only a chunk at a time
            if options.uses_bow:
                transformed = head.transform(hidden)  # [B, L, d]
                encoder_states = transformed[masked]  # [M, d]
                pool_mask, has_position = self._pool_mask(attention_mask, ordinary_mask, masked)
                if self.materialise_bow:
                    pooled = bow_pool(F.linear(transformed, head.weight, head.bias), pool_mask)  # [B, L, V] -> [B, V]
                else:
                    positions_per_chunk = max(1, options.loss_chunk_size // hidden.shape[0])
                    pooled = chunked_max_pool_logits(transformed, head.weight, head.bias, pool_mask,
                                                     positions_per_chunk)  # [B, V]
                bow_sum, bow_count = self._bow(pooled, has_position, original_input_ids, ordinary_mask)
            else:
                encoder_states = head.transform(hidden[masked])  # [M, d]
            encoder_sum, encoder_correct = self.linear_cross_entropy(
                encoder_states, head.weight, head.bias, encoder_labels, options.loss_chunk_size)

        if options.uses_decoder:
            if decoder_attention_mask is None:
                raise ValueError(f"objective {options.objective!r} needs decoder_attention_mask in the batch")
            decoder_sum, decoder_count, decoder_correct = self._decode(
                hidden[:, 0], original_input_ids, ordinary_mask, decoder_attention_mask, head
            )
        else:
            decoder_sum, decoder_count, decoder_correct = zero, zero, zero

        return PretrainingOutput(
            encoder_mlm_sum=encoder_sum,
            encoder_mlm_count=masked.sum(),
            encoder_mlm_correct=encoder_correct,
            decoder_sum=decoder_sum,
            decoder_count=decoder_count,
            decoder_correct=decoder_correct,
            bow_sum=bow_sum,
            bow_count=bow_count,
        )

    def _pool_mask(self, attention_mask, ordinary_mask, masked):
        """Positions the BoW max runs over: `[B, L]` bool, and `[B]` whether a sequence has any.

        A sequence with none pools everywhere (finite values) but adds no loss (see `_bow`)."""
        pool_mask = attention_mask.bool().clone()  # [B, L]
        pool_mask[:, 0] = False  # positions 1..L-1: [CLS] is the dense side's, not the BoW side's
        if self.options.bow_pool_exclude_special:
            pool_mask &= ordinary_mask
        if self.options.bow_pool_exclude_masked:
            pool_mask &= ~masked
        has_position = pool_mask.any(dim=1)  # [B]
        return pool_mask | ~has_position[:, None], has_position

    def _bow(self, pooled, has_position, original_input_ids, ordinary_mask):
        """BoW loss sum and sequence count from the max-pooled logits `pooled` `[B, V]`."""
        per_sequence = bow_loss_per_sequence(pooled, original_input_ids, ordinary_mask, self.options.bow_loss_reduction)
        return (per_sequence * has_position).sum(), has_position.sum()

    def _decode(self, sentence_embedding, original_input_ids, ordinary_mask, decoder_attention_mask, head):
        """[CLS] reconstruction: `sentence_embedding` `[B, d]` -> (loss sum, token count, correct count).

        `head`: the split head for the lean cross-entropy, or None for the naive `[T, V]` logits."""
        batch, length = original_input_ids.shape
        embeddings = self.embeddings
        h = sentence_embedding[:, None, :]  # [B, 1, d]
        if self.options.decoder_query == "embedding":
            query = embeddings(inputs_embeds=h.expand(batch, length, h.shape[-1]))  # LayerNorm(h + p_i + type_0)
        else:
            offset = getattr(embeddings, "padding_idx", -1) + 1  # RoBERTa counts positions from padding_idx + 1
            positions = torch.arange(offset, offset + length, device=h.device)
            query = h + embeddings.position_embeddings(positions)[None]  # h + p_i
        content = torch.cat([h, embeddings(input_ids=original_input_ids)[:, 1:]], dim=1)  # [B, L, d]
        decoded = self.decoder(query, content, decoder_attention_mask)  # [B, L, d]
        targets = original_input_ids[ordinary_mask]  # [T]: every ordinary token is reconstructed
        if head is None:
            logits = self.head(decoded[ordinary_mask])  # [T, V]
            loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
            correct = (logits.argmax(-1) == targets).sum()
        else:
            transformed = head.transform(decoded[ordinary_mask])  # [T, d]
            loss_sum, correct = self.linear_cross_entropy(transformed, head.weight, head.bias, targets,
                                                           self.options.loss_chunk_size)
        return loss_sum, ordinary_mask.sum(), correct

    # -- persistence ----------------------------------------------------------------------------
    def tie_weights(self) -> None:
        self.encoder.tie_weights()

    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        # Read by the HF Trainer when it reloads a checkpoint: these missing keys are tied, not lost.
        return deduplicated_state_dict(self)[1]

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the whole pre-training state: weights (encoder, head, decoder), encoder config, options."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(self, directory)
        self.encoder.config.save_pretrained(directory)
        self.options.save(directory / OPTIONS_FILE)

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> "DupMAEForPretraining":
        """Rebuild a model saved by `save_pretrained` (a pre-training output or `checkpoint-N` folder)."""
        directory = Path(directory)
        for name in (WEIGHTS_FILE, OPTIONS_FILE, "config.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a dupmae pre-training checkpoint: {name} is missing")
        encoder = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(directory))
        model = cls(encoder, PretrainingOptions.load(directory / OPTIONS_FILE))
        load_weights(model, directory)
        model.tie_weights()
        return model


def combine_losses(output: PretrainingOutput, options: PretrainingOptions, counts: dict[str, torch.Tensor],
                   scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss `L_enc + L_dec + bow_loss_weight * L_bow` and its terms, each `sum / count`.

    `counts` are the denominators — the local counts for one process, or counts summed over all
    processes (then `scale` = world size, so DDP's gradient averaging yields the global mean).
    Returns (total loss, detached terms for logging: losses and accuracies).
    """
    def mean(total, count):
        return total * scale / count.clamp(min=1)

    terms = {"encoder_mlm": mean(output.encoder_mlm_sum, counts["encoder_mlm"])}
    loss = terms["encoder_mlm"]
    if options.uses_decoder:
        terms["decoder"] = mean(output.decoder_sum, counts["decoder"])
        loss = loss + terms["decoder"]
    if options.uses_bow:
        terms["bow"] = mean(output.bow_sum, counts["bow"])
        loss = loss + options.bow_loss_weight * terms["bow"]
    logged = {f"loss_{name}": value.detach() for name, value in terms.items()}
    logged["acc_encoder_mlm"] = mean(output.encoder_mlm_correct.float(), counts["encoder_mlm"]).detach()
    if options.uses_decoder:
        logged["acc_decoder"] = mean(output.decoder_correct.float(), counts["decoder"]).detach()
    return loss, logged


def local_counts(output: PretrainingOutput) -> dict[str, torch.Tensor]:
    return {name: getattr(output, f"{name}_count").detach().float() for name in TERMS}
