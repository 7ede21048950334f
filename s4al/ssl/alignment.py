"""Distribution alignment of the teacher's pseudo labels (beyond the paper; ReMixMatch's idea,
which the paper cites among the re-weighting answers to class imbalance [7]).

A teacher trained on few labels under-predicts the rarer classes, and self-training on its own
confident pixels then teaches the student to under-predict them further (a diagnostic on the
synthetic streets: the teacher gave cars 1% of the pixels where the truth has 3%). Alignment
rescales every pixel's class probabilities by target / running, where `target` is the class
distribution of the labelled pixels and `running` an EMA of the teacher's mean prediction over the
unlabelled pixels, so the pseudo labels' class shares move towards the labelled shares.
"""

from __future__ import annotations

import torch


class DistributionAlignment:
    def __init__(self, target: torch.Tensor, momentum: float = 0.99) -> None:
        """target: (C,) class frequencies of the labelled pixels (any scale; zeros allowed)."""
        self.target = target.double() / target.sum().clamp_min(1)
        self.running = self.target.clone()  # no adjustment until predictions are seen
        self.momentum = momentum
        self.has_target = bool(self.target.any())

    def _to(self, device: torch.device) -> None:
        """The state follows the probabilities' device, so a GPU never waits on a copy to the host."""
        if self.running.device != device:
            self.target, self.running = self.target.to(device), self.running.to(device)

    def update(self, probs: torch.Tensor, valid: torch.Tensor, reduce=lambda marginal: marginal) -> None:
        """Moves `running` towards the mean class probability of this batch's valid pixels.
        probs (N, C, H, W), valid (N, H, W) bool; `reduce` averages the (C,) batch marginal over
        ranks, so that every rank keeps the same state."""
        weights = valid.unsqueeze(1).to(probs.dtype)
        marginal = (probs * weights).sum(dim=(0, 2, 3)) / weights.sum().clamp_min(1)
        marginal = reduce(marginal).double()
        self._to(marginal.device)
        self.running.mul_(self.momentum).add_(marginal, alpha=1 - self.momentum)

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) probabilities -> aligned probabilities of the same shape, summing to 1;
        unchanged while nothing is labelled (no target)."""
        if not self.has_target:
            return probs
        self._to(probs.device)
        ratio = (self.target / self.running.clamp_min(1e-6)).to(probs.dtype)
        aligned = probs * ratio.view(1, -1, 1, 1)
        return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)

    def state_dict(self) -> dict:
        """Only `running`: the target is recomputed from the labelled data at every start."""
        return {"running": self.running.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.running = state["running"].double().to(self.target.device)
