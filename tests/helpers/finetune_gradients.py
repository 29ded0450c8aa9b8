"""Gradient of one contrastive fine-tuning step, for the 2-process vs 1-process test.

Usage: finetune_gradients.py MODEL BEIR OUT PER_PROCESS_BATCH  (alone, or under torchrun)
Each process takes its slice of the same 4 groups (rank-major), wraps the encoder in DDP when
distributed, and rank 0 saves the loss (mean over processes) and the averaged gradients.
"""

import os
import sys

import torch
import torch.distributed as dist

from dupmae.data.beir import load_beir
from dupmae.data.finetune import GroupCollator, load_negatives
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig, load_tokenizer
from dupmae.training.contrastive import contrastive_loss
from dupmae.training.distributed import shutdown

model_dir, beir, out, per_process = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
distributed = "RANK" in os.environ
if distributed:
    dist.init_process_group("gloo")
rank = dist.get_rank() if distributed else 0
torch.manual_seed(0)
config = RepresentationConfig(representation="dupmae", dense_dim=16, sparse_top_k=8, sparse_activation="log1p_relu",
                              sparse_top_k_in_training=True)
encoder = DupMAEEncoder.from_pretrained(model_dir, config)
collection = load_beir(beir, "train")
query_ids = sorted(collection.qrels)
collator = GroupCollator(load_tokenizer(model_dir), query_ids, collection.queries, collection.corpus,
                         collection.qrels, load_negatives(f"{beir}/negs.jsonl"), group_size=3)
batch = collator([{"query_index": i} for i in range(rank * per_process, (rank + 1) * per_process)])
model = torch.nn.parallel.DistributedDataParallel(encoder) if distributed else encoder
queries = model(batch["query_input_ids"], batch["query_attention_mask"], batch["query_special_tokens_mask"])
passages = model(batch["passage_input_ids"], batch["passage_attention_mask"], batch["passage_special_tokens_mask"],
                 top_k=config.sparse_top_k)
loss, _ = contrastive_loss(queries, passages, group_size=3)
loss.backward()
total = loss.detach().clone()
if distributed:
    dist.all_reduce(total)
    total /= dist.get_world_size()
if rank == 0:
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    torch.save({"loss": float(total), "grads": grads}, out)
shutdown()  # barrier first: a rank leaving while another still writes can abort gloo
# Skip interpreter teardown: gloo's threads occasionally abort there ("terminate called without an
# active exception") after all the work above is done and saved; see docs/bugs-and-fixes.md.
sys.stdout.flush()
os._exit(0)
