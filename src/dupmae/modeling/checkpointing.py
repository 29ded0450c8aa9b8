"""Activation (gradient) checkpointing for our wrappers around a transformers model.

The HF Trainer turns checkpointing on by calling `activation_checkpointing_enable` on the model it
trains (transformers >= 5.x; older 5.x releases call `gradient_checkpointing_enable`). Our models wrap
a `PreTrainedModel`, so they pass the call on to it: the encoder's layers then recompute their
activations in the backward pass instead of storing them (less memory, about 30 % more compute).
The decoder layer and the vocabulary losses are not checkpointed: the lean losses already keep
their memory small.
"""

from __future__ import annotations


class DelegatesCheckpointing:
    """Mixin: `self.checkpointed_model()` is the transformers model whose layers are checkpointed."""

    def checkpointed_model(self):
        raise NotImplementedError

    def activation_checkpointing_enable(self, **kwargs) -> None:
        model = self.checkpointed_model()
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.checkpointed_model().gradient_checkpointing_enable(**kwargs)
