"""Saving whole modules (encoder + our extra layers) in one safetensors file.

safetensors refuses tensors that share storage, and masked-LM heads tie their projection to the
word embeddings; so tied tensors are stored once and re-tied on load. The HF Trainer reloads the
same file when resuming (`model.safetensors`), reading `_keys_to_ignore_on_save` to know that the
missing names are tied, not lost.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from dupmae.data.integrity import load_safetensors

WEIGHTS_FILE = "model.safetensors"  # the name the HF Trainer looks for when resuming


def deduplicated_state_dict(module: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict with each shared tensor once, names dropped because they alias a kept tensor)."""
    kept, dropped, seen = {}, [], set()
    for name, tensor in module.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            dropped.append(name)
            continue
        seen.add(key)
        kept[name] = tensor.detach().contiguous()
    return kept, dropped


def save_weights(module: nn.Module, directory: str | Path) -> None:
    state, _ = deduplicated_state_dict(module)
    safetensors.torch.save_file(state, str(Path(directory) / WEIGHTS_FILE), metadata={"format": "pt"})


def load_weights(module: nn.Module, directory: str | Path) -> None:
    """Load `save_weights` output into `module` (built with the same config); tied names may be absent."""
    state = load_safetensors(Path(directory) / WEIGHTS_FILE, "torch", "weights file",
                             "resume from an earlier checkpoint or rerun the step that wrote it")
    result = module.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - set(deduplicated_state_dict(module)[1])
    if result.unexpected_keys or missing:
        raise ValueError(f"weights in {directory} do not match the model built from its config: "
                         f"missing {sorted(missing)}, unexpected {sorted(result.unexpected_keys)}")
