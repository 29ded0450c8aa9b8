"""Device-specific speed paths, chosen and applied in one place (`prepare`), below every other layer.

The method code (`dupmae.modeling`) computes the same functions on every device and holds no
`device.type` branch: the decoder takes its attention function as an attribute, the pre-training
and retrieval models take their vocabulary kernels by name (`set_vocabulary_kernels`), and
`prepare` sets both, plus the encoder's attention implementation, dropout modules, TF32, the
allocator and `torch.compile`, from one `Accelerations` setting — for `dupmae pretrain`,
`dupmae finetune` and `dupmae encode` alike.

| path | where | what |
| --- | --- | --- |
| lean attention | CPU, training, dropout > 0 | `cpu/lean_attention.py`: O(L) memory per query row instead of the math path |
| fast dropout | CPU, training | `cpu/fast_dropout.py`: masks drawn four elements per random number |
| keep freed memory | CPU, Linux/glibc | `cpu/allocator.py`: no page faults on every step's large temporaries |
| oneDNN linears | CPU, inference | `cpu/onednn.py`: behind a probe of the private op (never crashes a CPU) |
| TF32 | CUDA, fp32 | `cuda.py`: fp32 matmuls on tensor cores |
| fused linear cross-entropy | CUDA, `vocab_loss=liger` | `cuda.py`: Liger-Kernel's Triton kernel |
| materialised BoW max-pool | `bow_pool=materialised` | `[B, L, V]` logits kept whole (a GPU holds 1 GB easily) |
| compiled layers | `compile_layers=true` | each transformer layer and the decoder through `torch.compile` |
"""

from dupmae.platform.accelerations import Accelerations, Prepared, prepare
from dupmae.platform.precision import native_bf16, resolve_bf16

__all__ = ["Accelerations", "Prepared", "prepare", "native_bf16", "resolve_bf16"]
