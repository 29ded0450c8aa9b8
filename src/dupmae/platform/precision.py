"""Which precision a device computes in: bf16 where its matmuls are native bf16, fp32 elsewhere.

bf16 autocast is 1.5-2x faster than fp32 where the hardware multiplies bf16 natively (CUDA compute
capability >= 8.0; x86 CPUs with AVX512_BF16 or AMX) and catastrophically slower where it does not:
on a 2-core AMD EPYC Zen 2 (AVX2 only) oneDNN emulates every bf16 product, a bf16 matmul ran at
about 1 GFLOP/s and a fine-tuning step took about 2 minutes instead of 3 s in fp32 (~40x). So the
setting `bf16` takes `auto` (the default everywhere), and `auto` asks the hardware.

The CPU answer comes from the CPU's feature flags (`/proc/cpuinfo` on Linux; no public PyTorch API
says whether oneDNN has native bf16 kernels), not from a timing: deterministic, instant, and
testable with the flags faked. Elsewhere (macOS, Windows, other architectures) `auto` means fp32:
fp32 is never the slow choice by 40x.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BF16_CHOICES = ("auto", "true", "false")
# CPU flags (as /proc/cpuinfo spells them) that give oneDNN native bf16 dot products.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
EMULATED_BF16_SLOWDOWN = ("about 40x slower than fp32 (measured on an AMD EPYC Zen 2: a fine-tuning step took "
                          "2 minutes instead of 3 s)")
CPUINFO = Path("/proc/cpuinfo")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, ARM `Features`), empty where they cannot be read."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether `device` multiplies bf16 natively, and why (for the log line)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        verdict = major >= 8
        return verdict, f"{name} has compute capability {major}.{minor} ({'>=' if verdict else '<'} 8.0 for bf16)"
    if device.type == "cpu":
        if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
            return False, f"the CPU is {platform.machine() or 'unknown'}: native bf16 is only assumed on x86 with AVX512_BF16/AMX"
        flags = cpu_flags()
        found = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in flags]
        if found:
            return True, f"the CPU has {', '.join(found)}"
        if not flags:
            return False, f"the CPU's flags could not be read from {CPUINFO}"
        return False, "the CPU has neither avx512_bf16 nor amx_bf16 (bf16 matmuls would be emulated)"
    return False, f"native bf16 is not assumed on {device.type}"


def parse_bf16(value) -> bool | None:
    """A `bf16` setting as given (bool, or 'auto' / 'true' / 'false' / yes / no / 1 / 0): True,
    False, or None for auto."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"bf16 must be auto, true or false, got {value!r}")


def resolve_bf16(setting, device: torch.device | str, what: str = "computing") -> bool:
    """The bf16 choice for `device`: `auto` (or None) asks the hardware; an explicit true on a device
    without native bf16 is kept, with a warning of the cost. Logs one line saying what and why."""
    requested = parse_bf16(setting)
    native, reason = native_bf16(device)
    if requested is None:
        logger.info("precision: %s for %s on %s, because %s (bf16=auto)",
                    "bf16" if native else "fp32", what, torch.device(device).type, reason)
        return native
    if requested and not native:
        message = (f"bf16=true on a device without native bf16 ({reason}): {what} will run {EMULATED_BF16_SLOWDOWN}; "
                   "use bf16=auto or false")
        logger.warning(message)
    else:
        logger.info("precision: %s for %s (bf16=%s set explicitly)", "bf16" if requested else "fp32", what,
                    str(requested).lower())
    return requested


def training_device(use_cpu: bool = False) -> torch.device:
    """The device the HF Trainer will train on in this process: CUDA, else Apple MPS, unless told to use the CPU."""
    if not use_cpu and torch.cuda.is_available():
        return torch.device("cuda")
    if not use_cpu and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for `device_type`, or None when autocast is off there."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (TypeError, AttributeError, RuntimeError):  # torch < 2.4 has per-device functions only
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return None
