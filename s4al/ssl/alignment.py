"""Distribution alignment of the teacher's pseudo labels (beyond the paper; ReMixMatch's idea,
which the paper cites among the re-weighting answers to class imbalance [7]).

A teacher trained on few labels under-predicts the rarer classes, and self-training on its own
pseudo labels then teaches the student to under-predict them further (a diagnostic on the
synthetic streets: the teacher gave cars 1% of the pixels where the truth has 3%). Both aligners
rescale every pixel's class probabilities so that the pseudo labels' class shares move towards
`target`, the class distribution of the labelled pixels:

- `ProbabilityAlignment` (ReMixMatch): by target / running, where `running` is an EMA of the
  teacher's mean probability over the unlabelled pixels. Matching mean probabilities does not
  match the argmax: a rare class can hold its share of probability mass yet win few pixels
  (CamVid, `cpu` protocol: an aligned teacher's pedestrian pseudo labels had precision 0.51 and
  recall 0.08).
- `ArgmaxAlignment`: by exp(bias), a per-class log-offset that an integral controller moves until
  the EMA of the aligned pseudo labels' argmax shares equals the target. Such offsets, solved
  offline for a trained CamVid teacher, raised its train pseudo-label mIoU from 43.5 to 48.5
  (`benchmarks/research/pseudo_labels.py --argmax-alignment`,
  benchmarks/results/archive/pseudo_labels/cpu_ssl_10_seed0.json).

Classes absent from the labelled pixels get probability 0 in both.

A small labelled set can misstate the pool's classes (CamVid seed 0: 6.7% Tree where the train
set has 10.1%), and then alignment teaches that error. With `estimate_steps`, the first that many
updates also average the teacher's unaligned mean probabilities, and the target becomes the
geometric mean of those and the labelled shares, fixed from then on, so that later predictions,
which follow the aligned pseudo labels, cannot pull it back (offline on CamVid seed 0, pseudo
labels aligned to the labelled shares scored 43.8 mIoU and to this target 46.7;
`benchmarks/research/pseudo_labels.py --align-to`).
"""

from __future__ import annotations

import torch


def _probability_mass(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(C,) summed probabilities of the pixels with weight 1."""
    return (probs * weights).sum(dim=(0, 2, 3))


def _shares(mass: torch.Tensor, weights: torch.Tensor, reduce) -> torch.Tensor:
    """(C,) float64 class shares: `mass` over the weighted pixels' count, both averaged by `reduce`
    over the ranks (so a rank with more valid pixels weighs more)."""
    both = reduce(torch.cat([mass, weights.sum().view(1)]))  # a mean count may be under 1 pixel
    return (both[:-1] / both[-1].clamp_min(torch.finfo(both.dtype).tiny)).double()


class _Aligner:
    state_names: tuple[str, ...] = ("running",)  # what a checkpoint keeps; the labelled shares are recomputed

    def __init__(self, target: torch.Tensor, momentum: float = 0.99, estimate_steps: int = 0) -> None:
        """target: (C,) class frequencies of the labelled pixels (any scale; zeros allowed);
        momentum: of the running shares' EMA (0.99: about the last 100 batches; the teacher's
        ssl.ema_momentum is another matter); estimate_steps: updates that estimate the predicted
        shares (0: the target stays `target`)."""
        self.labelled = target.double() / target.sum().clamp_min(1)
        self.target = self.labelled.clone()
        self.running = self.target.clone()  # no adjustment until predictions are seen
        self.momentum = momentum
        self.has_target = bool(self.target.any())
        self.estimate_steps, self.seen = estimate_steps, 0
        self.predicted = torch.zeros_like(self.target)
        if estimate_steps:
            self.state_names = (*self.state_names, "target", "predicted")

    def _to(self, device: torch.device) -> None:
        """The state follows the probabilities' device, so a GPU never waits on a copy to the host."""
        if self.running.device != device:
            for name in {"target", "labelled", "predicted", *self.state_names}:
                setattr(self, name, getattr(self, name).to(device))

    def _estimate(self, probs: torch.Tensor, weights: torch.Tensor, reduce) -> None:
        self.predicted += _shares(_probability_mass(probs, weights), weights, reduce)
        self.seen += 1
        if self.seen == self.estimate_steps:
            geometric = (self.labelled * self.predicted / self.seen).sqrt()
            self.target = geometric / geometric.sum().clamp_min(torch.finfo(geometric.dtype).tiny)

    def _ratio(self) -> torch.Tensor:
        raise NotImplementedError

    def _batch_shares(self, probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, probs: torch.Tensor, valid: torch.Tensor, reduce=lambda shares: shares) -> None:
        """Folds this batch's class shares over its valid pixels into the state.
        probs (N, C, H, W) unaligned, valid (N, H, W) bool; `reduce` averages a tensor over the
        ranks, so that every rank keeps the same state."""
        weights = valid.unsqueeze(1).to(probs.dtype)
        self._to(probs.device)
        if self.seen < self.estimate_steps:
            self._estimate(probs, weights, reduce)
        shares = _shares(self._batch_shares(probs, weights), weights, reduce)
        self.running.mul_(self.momentum).add_(shares, alpha=1 - self.momentum)

    def _scaled(self, probs: torch.Tensor) -> torch.Tensor:
        """probs times the per-class ratio, not normalised per pixel (which cannot change an argmax)."""
        return probs * self._ratio().to(probs.dtype).view(1, -1, 1, 1) if self.has_target else probs

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) probabilities -> aligned probabilities of the same shape, summing to 1;
        unchanged while nothing is labelled (no target)."""
        if not self.has_target:
            return probs
        self._to(probs.device)
        aligned = self._scaled(probs)
        return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)

    def state_dict(self) -> dict:
        return {name: getattr(self, name).cpu() for name in self.state_names} | {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        for name in self.state_names:
            setattr(self, name, state[name].double().to(self.target.device))
        self.seen = state.get("seen", 0)  # absent from checkpoints made before the estimate existed


class ProbabilityAlignment(_Aligner):
    def _ratio(self) -> torch.Tensor:
        return self.target / self.running.clamp_min(1e-6)

    def _batch_shares(self, probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return _probability_mass(probs, weights)


class ArgmaxAlignment(_Aligner):
    state_names = ("running", "bias")

    def __init__(
        self, target: torch.Tensor, momentum: float = 0.99, estimate_steps: int = 0, rate: float = 0.01,
        max_step: float = 1.0,
    ) -> None:
        """rate: the bias moves by rate * log(target / running) per update, that log clipped to
        +-max_step, so one batch without a rare class cannot swing it."""
        super().__init__(target, momentum, estimate_steps)
        self.bias = torch.zeros_like(self.target)
        self.rate, self.max_step = rate, max_step

    def _ratio(self) -> torch.Tensor:
        return self.bias.exp() * (self.target > 0)

    def _batch_shares(self, probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        winners = self._scaled(probs).max(dim=1).indices  # argmax(dim=1) of an NCHW tensor is ~6x slower on CPU
        counts = torch.zeros(probs.shape[1], dtype=probs.dtype, device=probs.device)
        return counts.scatter_add_(0, winners.flatten(), weights.flatten())

    def update(self, probs: torch.Tensor, valid: torch.Tensor, reduce=lambda shares: shares) -> None:
        super().update(probs, valid, reduce)
        error = (self.target / self.running.clamp_min(1e-6)).clamp_min(1e-6).log().clamp(-self.max_step, self.max_step)
        self.bias.add_(error * (self.target > 0), alpha=self.rate)


ALIGNERS = {"probabilities": ProbabilityAlignment, "argmax": ArgmaxAlignment}
