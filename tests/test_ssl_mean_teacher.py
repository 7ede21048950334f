import math

import pytest
import torch
from torch import nn

from s4al.ssl.mean_teacher import MeanTeacher, ema_decay, pseudo_labels_from_probs


class Scalar(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value]))


def set_value(model: Scalar, value: float) -> None:
    with torch.no_grad():
        model.w.fill_(value)


def test_ema_decay_ramps_then_caps():
    assert ema_decay(0, 0.99) == 0.0
    assert ema_decay(1, 0.99) == 0.5
    assert ema_decay(2, 0.99) == pytest.approx(2 / 3)
    assert ema_decay(50, 0.99) == pytest.approx(1 - 1 / 51)
    assert ema_decay(99, 0.99) == pytest.approx(0.99)
    assert ema_decay(10_000, 0.99) == 0.99


def test_ema_of_one_parameter_by_hand():
    student = Scalar(1.0)
    teacher = MeanTeacher(student, momentum=0.99)
    set_value(student, 3.0)
    teacher.update(student, step=0)  # m = 0: teacher := student
    assert teacher.model.w.item() == 3.0
    set_value(student, 5.0)
    teacher.update(student, step=1)  # m = 0.5
    assert teacher.model.w.item() == pytest.approx(0.5 * 3 + 0.5 * 5)
    set_value(student, 7.0)
    teacher.update(student, step=2)  # m = 2/3: 2/3 * 4 + 1/3 * 7 = 5
    assert teacher.model.w.item() == pytest.approx(5.0)
    set_value(student, 105.0)
    teacher.update(student, step=500)  # capped at 0.99: 0.99 * 5 + 0.01 * 105 = 6
    assert teacher.model.w.item() == pytest.approx(6.0)


def test_teacher_is_frozen_and_separate_from_student():
    student = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    teacher = MeanTeacher(student)
    assert student.training and all(p.requires_grad for p in student.parameters())
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.model[0].weight.data_ptr() != student[0].weight.data_ptr()


def test_batchnorm_running_stats_are_averaged_and_count_copied():
    student = nn.BatchNorm1d(2)
    teacher = MeanTeacher(student)  # running_mean 0, running_var 1
    student.running_mean.copy_(torch.tensor([2.0, 4.0]))
    student.running_var.copy_(torch.tensor([3.0, 5.0]))
    student.num_batches_tracked.fill_(7)
    teacher.update(student, step=1)  # m = 0.5
    assert teacher.model.running_mean.tolist() == [1.0, 2.0]
    assert teacher.model.running_var.tolist() == [2.0, 3.0]
    assert teacher.model.num_batches_tracked.item() == 7


def test_pseudo_labels_from_softmax_by_hand():
    logits = torch.tensor([0.0, math.log(3.0), 0.0]).view(1, 3, 1, 1)  # softmax (1/5, 3/5, 1/5)
    labels, confidence = pseudo_labels_from_probs(logits.softmax(dim=1))
    assert labels.dtype == torch.long and labels.shape == (1, 1, 1)
    assert labels.item() == 1
    assert confidence.item() == pytest.approx(0.6)


def test_teacher_probabilities_in_eval_mode_independent_of_batch():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    teacher = MeanTeacher(student)
    teacher.model.train()  # probabilities() must switch back to eval mode
    images = torch.rand(3, 3, 5, 6)
    labels, confidence = pseudo_labels_from_probs(teacher.probabilities(images))
    alone_labels, alone_conf = pseudo_labels_from_probs(teacher.probabilities(images[:1]))
    assert labels.shape == (3, 5, 6) and confidence.shape == (3, 5, 6)
    assert torch.equal(labels[:1], alone_labels)
    assert torch.allclose(confidence[:1], alone_conf)
    assert not confidence.requires_grad


def test_teacher_probabilities_normalise_with_the_running_statistics_not_the_batch_s():
    """Every logit before BatchNorm is 1; running means (1, 1 - ln 3, 1) and variances 1 make the
    logits (0, ln 3, 0), softmax (1/5, 3/5, 1/5). The batch's own statistics (mean 1, variance 0)
    would make every logit 0: 1/3 each."""
    conv, norm = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(1.0)
    norm.running_mean.copy_(torch.tensor([1.0, 1.0 - math.log(3.0), 1.0]))
    teacher = MeanTeacher(nn.Sequential(conv, norm))
    teacher.model.train()  # probabilities() must switch back to eval mode
    probs = teacher.probabilities(torch.zeros(2, 3, 1, 1))
    assert probs.flatten(1).tolist() == [pytest.approx([0.2, 0.6, 0.2], abs=1e-5)] * 2


def test_state_dict_round_trip():
    student = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    teacher = MeanTeacher(student)
    with torch.no_grad():
        student[0].weight.add_(1.0)
    student[1].running_mean.fill_(0.5)
    teacher.update(student, step=3)
    restored = MeanTeacher(nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)))
    restored.load_state_dict(teacher.state_dict())
    for key, value in teacher.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
