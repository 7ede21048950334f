"""Mean teacher (paper Sec. 3.1, Eq. 1): an EMA copy of the student that produces pseudo labels."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, momentum: float) -> float:
    """m_t = min(1 - 1/(step+1), momentum): 0 at step 0 (teacher := student), then ramps up to the cap."""
    return min(1.0 - 1.0 / (step + 1), momentum)


@torch.no_grad()
def pseudo_labels_from_probs(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) probabilities -> labels (N, H, W) long = argmax, confidence (N, H, W) float32 = max."""
    confidence, labels = probs.float().max(dim=1)
    return labels, confidence


class MeanTeacher:
    """Holds `model`, a frozen copy of the student updated by EMA of its parameters and float buffers.

    The teacher pseudo-labels in eval mode. Eval-mode BatchNorm with EMA-averaged running statistics
    gives deterministic pseudo labels that do not depend on which images share the unlabelled
    batch, and it is the same network state that later scores the pool. (The authors' code
    pseudo-labelled in train mode; it did no better here: docs/design.md.)
    """

    def __init__(self, student: nn.Module, momentum: float = 0.99) -> None:
        self.momentum = momentum
        self.model = copy.deepcopy(student).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """theta' := m_t theta' + (1 - m_t) theta for parameters and floating buffers (BN running
        mean/var); integer buffers (BN num_batches_tracked) are copied. Call after optimizer.step()."""
        weight = 1.0 - ema_decay(step, self.momentum)
        teacher_floats = list(self.model.parameters())
        student_floats = list(student.parameters())
        if len(teacher_floats) != len(student_floats):
            raise ValueError("student and teacher have different parameter lists")
        teacher_ints, student_ints = [], []
        for teacher_buf, student_buf in zip(self.model.buffers(), student.buffers(), strict=True):
            floating = teacher_buf.is_floating_point()
            (teacher_floats if floating else teacher_ints).append(teacher_buf)
            (student_floats if floating else student_ints).append(student_buf)
        # one kernel launch each for all tensors: per-tensor copies would be ~50 launches a step
        if teacher_floats:
            torch._foreach_lerp_(teacher_floats, student_floats, weight)
        if teacher_ints:
            torch._foreach_copy_(teacher_ints, student_ints)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images -> (N, C, H, W) float32 class probabilities.

        Assumes the model maps images to (N, C, H, W) logits at input resolution."""
        return self.model.eval()(images).float().softmax(dim=1)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
