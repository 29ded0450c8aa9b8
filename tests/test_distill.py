"""Stage 3: the KL term against hand-computed values, its columns, and fine-tuning with teacher scores."""

import json
import math

import pytest
import torch

from dupmae.data.finetune import GroupCollator, load_teacher_scores
from dupmae.modeling.representation import Representation
from dupmae.training.contrastive import own_group_scores
from dupmae.training.distill import distillation_loss
from test_finetune import tiny_encoder_dir, write_beir

NAN = float("nan")


def test_kl_term_against_hand_computed_values():
    # query 0: teacher [0, 0] -> p_t = (1/2, 1/2); student [1, 0] -> p_s = (e, 1) / (e + 1)
    #   KL = 1/2 log(1/2 / (e/(e+1))) + 1/2 log(1/2 / (1/(e+1))) = log((e + 1) / 2) - 1/2 = 0.120115
    first = math.log((math.e + 1) / 2) - 0.5
    # query 1: column 1 has no teacher score (left out); teacher [ln 3, -, 0] -> p_t = (3/4, 1/4);
    #   student [0, 5, 0] -> p_s = (1/2, 1/2);  KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812
    second = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student = torch.tensor([[1.0, 0.0, 7.0], [0.0, 5.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, NAN], [math.log(3.0), NAN, 0.0]])
    assert first == pytest.approx(0.120115, abs=1e-6) and second == pytest.approx(0.130812, abs=1e-6)
    assert distillation_loss(student, teacher).item() == pytest.approx((first + second) / 2, rel=1e-6)
    # temperature 2 divides both: query 0 becomes log((e^0.5 + 1) / 2) - 1/4
    assert distillation_loss(student[:1], teacher[:1], temperature=2.0).item() == pytest.approx(
        math.log((math.exp(0.5) + 1) / 2) - 0.25, rel=1e-6)


def test_student_temperature_scales_the_students_softmax_only():
    # a cosine student [0.5, 0.45] at its contrastive temperature 0.05 -> logits [10, 9] -> p_s = (e, 1) / (e + 1);
    # teacher [0, 0] at temperature 1 -> p_t = (1/2, 1/2): the KL is query 0's of the hand-computed test above
    student, teacher = torch.tensor([[0.5, 0.45]]), torch.tensor([[0.0, 0.0]])
    expected = math.log((math.e + 1) / 2) - 0.5
    assert distillation_loss(student, teacher, 1.0, student_temperature=0.05).item() == pytest.approx(expected, rel=1e-5)
    # one temperature for both leaves the cosine student nearly uniform: p_s = (e^0.05, 1) / (e^0.05 + 1)
    near_uniform = math.log((math.exp(0.05) + 1) / 2) - 0.025
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(near_uniform, abs=1e-6)
    # a teacher [ln 3, 0] at temperature 0.5 -> p_t = (9/10, 1/10); student logits [10, 9] as above
    p_s = (math.e / (math.e + 1), 1 / (math.e + 1))
    kl = 0.9 * math.log(0.9 / p_s[0]) + 0.1 * math.log(0.1 / p_s[1])
    assert distillation_loss(student, torch.tensor([[math.log(3.0), 0.0]]), 0.5, student_temperature=0.05).item() \
        == pytest.approx(kl, rel=1e-5)
    with pytest.raises(ValueError, match="temperatures"):
        distillation_loss(student, teacher, 1.0, student_temperature=0.0)


def test_kl_term_is_zero_when_student_equals_teacher():
    teacher = torch.tensor([[3.0, 1.0, -2.0, 0.5], [0.1, 0.2, 0.3, NAN]])
    student = torch.nan_to_num(teacher, nan=9.0).requires_grad_()
    loss = distillation_loss(student, teacher, temperature=0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.allclose(student.grad, torch.zeros_like(student.grad), atol=1e-7)
    shifted = torch.nan_to_num(teacher, nan=0.0) + torch.tensor([[4.0], [-1.0]])  # a constant per query: same softmax
    assert distillation_loss(shifted, teacher).item() == pytest.approx(0.0, abs=1e-6)
    # a query with fewer than two scored columns adds nothing and is not counted in the mean
    only_one = torch.tensor([[2.0, NAN], [0.0, 0.0]])
    assert distillation_loss(torch.tensor([[5.0, 1.0], [1.0, 0.0]]), only_one).item() == pytest.approx(
        math.log((math.e + 1) / 2) - 0.5, rel=1e-6)


def test_own_group_scores_are_the_positive_first_columns_of_each_query():
    # 2 queries, groups of 3: passages p0+ p0- p0- p1+ p1- p1-; dense scores q_i . p_j
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    passages = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0], [0.0, -1.0]])
    scores = own_group_scores(Representation(queries, None), Representation(passages, None), group_size=3)
    assert scores.tolist() == [[2.0, 1.0, 0.0], [4.0, 0.0, -1.0]]  # not the other query's passages


def test_collator_carries_teacher_scores_in_group_order(tmp_path, wordpiece_tokenizer):
    corpus = {f"d{i}": {"title": "", "text": f"protein {i}"} for i in range(8)}
    qrels = {"q0": {"d0": 1}}
    teacher = {"q0": {"d0": 2.5, "d1": 0.5, "d2": -1.0}}  # d3..d7 were never scored
    collator = GroupCollator(wordpiece_tokenizer, ["q0"], {"q0": "protein"}, corpus, qrels,
                             {"q0": ["d1", "d2", "d3", "d4"]}, group_size=3, teacher_scores=teacher)
    _, docs = collator.group(0)
    assert docs[0] == "d0" and sorted(docs[1:]) == ["d1", "d2"]  # negatives only among the scored ones
    batch = collator([{"query_index": 0}])
    assert batch["teacher_scores"].tolist() == [[teacher["q0"][d] for d in docs]]
    collator.group_size = 4  # one more than the scored negatives: a random top-up without a teacher score
    _, docs = collator.group(0)
    assert math.isnan(collator([{"query_index": 0}])["teacher_scores"][0, 3].item()) and docs[3] not in teacher["q0"]
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps({"query_id": "q0", "scores": teacher["q0"]}) + "\n")
    assert load_teacher_scores(path) == teacher
    path.write_text('{"query_id": "q0"}\n')
    with pytest.raises(ValueError, match=r"scores\.jsonl:1"):
        load_teacher_scores(path)


def test_finetune_loss_adds_the_weighted_kl_term(tmp_path, wordpiece_dir):
    from dupmae.training.finetune import finetune, parse_arguments

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    beir = write_beir(tmp_path / "beir")
    scores = tmp_path / "teacher.jsonl"  # the teacher prefers each query's lower-numbered documents
    with open(scores, "w") as handle:
        for i in range(16):
            docs = [f"d{i}"] + [f"d{(i + j) % 30}" for j in range(1, 6)]
            handle.write(json.dumps({"query_id": f"q{i}", "scores": {d: 3.0 - k for k, d in enumerate(docs)}}) + "\n")

    def train(name: str, *extra: str) -> list[dict]:
        output = tmp_path / name
        finetune(*parse_arguments([
            "--model", start, "--data", str(beir), "--negatives", str(beir / "negs.jsonl"), "--output", str(output),
            "--group-size", "3", "--per-device-train-batch-size", "4", "--max-steps", "2", "--logging-steps", "1",
            "--representation", "cls", "--learning-rate", "1e-3", "--report-to", "none", "--disable-tqdm", "true",
            *extra]))
        return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines() if "loss_distill" in line]

    weighted = train("weighted", "--teacher-scores", str(scores), "--distill-weight", "3", "--distill-temperature", "2")
    assert [r["step"] for r in weighted] == [1, 2]
    for record in weighted:
        assert record["loss_distill"] > 0
        assert record["loss"] == pytest.approx(record["loss_contrastive"] + 3.0 * record["loss_distill"], abs=2e-4)
    unweighted = train("unweighted", "--teacher-scores", str(scores), "--distill-weight", "0",
                       "--distill-temperature", "2")
    # the first step sees the same batch and weights: the same terms, and the loss is the contrastive term alone
    assert unweighted[0]["loss_contrastive"] == pytest.approx(weighted[0]["loss_contrastive"], rel=1e-5)
    assert unweighted[0]["loss_distill"] == pytest.approx(weighted[0]["loss_distill"], rel=1e-5)
    assert unweighted[0]["loss"] == pytest.approx(unweighted[0]["loss_contrastive"], abs=2e-4)
    with pytest.raises(ValueError, match="distill"):
        parse_arguments(["--model", start, "--data", str(beir), "--output", str(tmp_path / "x"),
                         "--distill-temperature", "0"])
