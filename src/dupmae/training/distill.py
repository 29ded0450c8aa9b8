"""Distillation from a cross-encoder teacher (DUPMAE.md §3, stage 3): KL between softmaxes over a group.

For each query `i` and its own group (the positive first, then its hard negatives; the same columns
in the student's and the teacher's score matrices), with the teacher's temperature `tau` and the
student's `tau_s` (by default the same):

    p_t = softmax(teacher_i / tau),  p_s = softmax(student_i / tau_s)
    KL_i = sum_j p_t[j] * (log p_t[j] - log p_s[j])

and the term is the mean of `KL_i` over the queries (no tau² factor). `dupmae finetune` passes its
contrastive temperature as `tau_s`, so the student's distribution is the one its contrastive loss
already shapes: a cosine student (scores in [-1, 1]) at temperature 0.05 spans what a cross-encoder's
logits span at 1, where dividing its cosines by the teacher's `tau` = 1 would leave it a near-uniform
softmax that can never match the teacher's.

Only the query's own group counts: in-batch passages of other queries have no teacher score. A
column without a teacher score (NaN: a random top-up negative the teacher never saw) is left out of
both softmaxes. The term is 0
exactly when the student's scores equal the teacher's up to a constant per query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                      student_temperature: float | None = None) -> torch.Tensor:
    """Mean over queries of KL(softmax(teacher / tau) || softmax(student / tau_s)).

    Args:
        student: `[B, G]` the student's scores of each query's own group (positive first).
        teacher: `[B, G]` the teacher's scores of the same pairs; NaN = not scored (left out).
        temperature: `tau` > 0 of the teacher's softmax (and the student's, without `student_temperature`).
        student_temperature: `tau_s` > 0 of the student's softmax; None = `temperature`.
    Returns:
        a scalar (float32); 0 when no query has two scored columns.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student scores {tuple(student.shape)} and teacher scores {tuple(teacher.shape)} differ")
    student_temperature = temperature if student_temperature is None else student_temperature
    if temperature <= 0 or student_temperature <= 0:
        raise ValueError(f"the distillation temperatures must be > 0, got {temperature} and {student_temperature}")
    scored = ~torch.isnan(teacher)  # [B, G]
    minus_inf = torch.finfo(torch.float32).min
    teacher_logits = (teacher.float() / temperature).masked_fill(~scored, minus_inf)
    student_logits = (student.float() / student_temperature).masked_fill(~scored, minus_inf)
    teacher_log_p, student_log_p = F.log_softmax(teacher_logits, dim=1), F.log_softmax(student_logits, dim=1)
    per_pair = teacher_log_p.exp() * (teacher_log_p - student_log_p)  # [B, G]
    per_query = per_pair.masked_fill(~scored, 0.0).sum(dim=1)  # [B]
    counted = (scored.sum(dim=1) >= 2).float()  # one scored column: both softmaxes are 1, nothing to learn
    # no host sync: rows not counted contribute 0 to the sum (and the graph stays connected for DDP)
    return (per_query * counted).sum() / counted.sum().clamp(min=1.0)
