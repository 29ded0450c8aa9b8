"""Contrastive loss with hard and in-batch negatives, optionally shared across processes.

Scores of each local query against every passage of the (global) batch; the target is the query's
own positive, the first column of its group. With `across_devices`, passages are all-gathered *with
gradient* (`torch.distributed.nn.functional.all_gather`), so with DDP's gradient averaging N processes
give exactly the gradient of one process on the concatenated batch (tested with 2 gloo processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dupmae.modeling.representation import Representation, score
from dupmae.training.distributed import world_size


_GATHER_GROUP = None


def _gather_group():
    """A process group of our own for the gathers. Their backward runs a collective inside the
    autograd engine while DDP all-reduces gradients on its group; sharing one gloo group between the
    two interleaves collectives differently on different ranks and can abort a process."""
    global _GATHER_GROUP
    if _GATHER_GROUP is None:
        _GATHER_GROUP = dist.new_group()
    return _GATHER_GROUP


def gather_with_grad(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate `tensor` `[n, ...]` from every process in rank order: `[world * n, ...]`."""
    if tensor is None or world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous(), group=_gather_group()), dim=0)


def contrastive_loss(queries: Representation, passages: Representation, group_size: int,
                     temperature: float = 1.0, across_devices: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy of each query's positive among all passages.

    Args:
        queries: `B` local queries.
        passages: `B * group_size` local passages, group `i` = rows `i*G .. i*G+G-1`, positive first.
    Returns:
        (mean loss over local queries, accuracy: share of queries whose positive scores highest).
    """
    batch = (queries.dense if queries.dense is not None else queries.sparse).shape[0]
    offset = 0
    if across_devices and world_size() > 1:
        passages = Representation(gather_with_grad(passages.dense), gather_with_grad(passages.sparse))
        offset = dist.get_rank() * batch * group_size
    scores = score(queries, passages) / temperature  # [B, world * B * G]
    labels = offset + torch.arange(batch, device=scores.device) * group_size
    loss = F.cross_entropy(scores.float(), labels)
    accuracy = (scores.argmax(dim=1) == labels).float().mean()
    return loss, accuracy.detach()


def own_group_scores(queries: Representation, passages: Representation, group_size: int) -> torch.Tensor:
    """Each local query's scores against its own group only (the distillation term's inputs).

    Args:
        queries: `B` local queries.
        passages: the `B * group_size` *local* passages (never gathered), group `i` = rows
            `i*G .. i*G+G-1`, positive first — the columns `offset + i*G + j` of `contrastive_loss`'s
            score matrix, before its temperature.
    Returns:
        `[B, G]`: column 0 the positive, then the hard negatives in group order.
    """
    batch = (queries.dense if queries.dense is not None else queries.sparse).shape[0]
    scores = score(queries, passages)  # [B, B * G]
    rows = torch.arange(batch, device=scores.device)
    return scores.view(batch, batch, group_size)[rows, rows]  # [B, G]: block i of row i
