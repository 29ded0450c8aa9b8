"""Reading dupmae's own files (checkpoints, index parts, manifests, stage markers) so that a damaged
or half-written file is a clear error that names it — never a traceback from a parser.

Every writer of these files writes a temporary file and renames it into place, so a reader meets a
damaged file only after a crash of the machine, a full disk, or a hand edit; the message then says
which file and what to do (rerun the step that wrote it, or resume from an earlier checkpoint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class DamagedFileError(ValueError):
    """One of dupmae's own files is unreadable, truncated or not what it should be (CLI exit status 2)."""


def read_json_file(path: str | Path, what: str = "file", hint: str = "") -> Any:
    """The JSON value in `path`; a missing file is FileNotFoundError, a damaged one DamagedFileError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{path}: {what} cannot be read ({error}){_hint(hint)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        state = "empty" if not text.strip() else f"damaged or incomplete JSON ({error})"
        raise DamagedFileError(f"{path}: {what} is {state}{_hint(hint)}") from None


def write_json_atomically(path: str | Path, value: Any) -> None:
    """Write `value` as JSON to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def verify_safetensors(path: str | Path, what: str = "weights file", hint: str = "") -> list[str]:
    """Check that a safetensors file is whole (header readable, data covering every tensor); returns
    its tensor names. Reads the header only, not the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return list(handle.keys())
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean "damaged"
        raise DamagedFileError(f"{path}: {what} is damaged or incomplete ({_first_line(error)}){_hint(hint)}") from None


def load_safetensors(path: str | Path, framework: str = "numpy", what: str = "weights file", hint: str = "",
                     device: str = "cpu") -> dict:
    """All tensors of a safetensors file (numpy arrays or torch tensors); DamagedFileError when damaged."""
    import safetensors.numpy
    import safetensors.torch

    verify_safetensors(path, what, hint)
    try:
        if framework == "numpy":
            return safetensors.numpy.load_file(str(path))
        return safetensors.torch.load_file(str(path), device=device)
    except Exception as error:  # noqa: BLE001
        raise DamagedFileError(f"{path}: {what} is damaged ({_first_line(error)}){_hint(hint)}") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""
