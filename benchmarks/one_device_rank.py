"""`torchrun` entry for N processes sharing one GPU: `dupmae pretrain` with every rank on device 0.

The HF Trainer puts local rank i on `cuda:i`; with one GPU rank 1 would ask for a device that does not
exist. Here every rank reports local rank 0 (its global rank is unchanged, so only rank 0 writes), which
is as far as one GPU lets the distributed code run. On a CPU it changes nothing.

    torchrun --nproc_per_node 2 benchmarks/one_device_rank.py [dupmae pretrain flags]
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

if __name__ == "__main__":
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() == 1:
        os.environ["LOCAL_RANK"] = "0"
    from dupmae.cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
