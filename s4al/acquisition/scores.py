"""Acquisition heuristics: pure functions from class probabilities to informativeness scores, and
the names `active.metric` accepts (metric_names(); s4al/config.py validates against them).

`probs` is a softmax output (N, C, H, W); a pixel score map is (N, H, W), higher = more informative.
A new heuristic is a function of that form and an entry in SCORE_FUNCTIONS: nothing else lists them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _check_probs(probs: Tensor) -> Tensor:
    if probs.dim() != 4:
        raise ValueError(f"probs must be (N, C, H, W), got shape {tuple(probs.shape)}")
    return probs.float()


def entropy(probs: Tensor) -> Tensor:
    """-sum_c p log p. `entr` is -p log p in one pass with entr(0) = 0, so an underflowed p adds 0,
    not NaN; on a CPU it takes less than half the time of clamping, logging and multiplying."""
    return torch.special.entr(_check_probs(probs)).sum(dim=1)


def least_confidence(probs: Tensor) -> Tensor:
    """1 - max_c p."""
    return 1.0 - _check_probs(probs).amax(dim=1)


def margin(probs: Tensor) -> Tensor:
    """1 - (p_top1 - p_top2): high where the two best classes are close."""
    probs = _check_probs(probs)
    if probs.shape[1] < 2:
        raise ValueError("margin needs at least 2 classes")
    top2 = probs.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def random_scores(shape: tuple[int, int], cell: int, generator: torch.Generator | None = None) -> Tensor:
    """(H, W) uniform [0, 1) scores, one draw per `cell` x `cell` block from the top left, drawn from
    `generator` (a seeded CPU torch.Generator for reproducibility). A cell's mean is then one
    uniform draw whatever its size: a mean of pixel draws varies more in a cell of fewer pixels (an
    image's edge cells) and would make those the likelier pick."""
    h, w = shape
    draws = torch.rand((-(-h // cell), -(-w // cell)), generator=generator)
    return draws.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:h, :w]


SCORE_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "entropy": entropy,
    "least_confidence": least_confidence,
    "margin": margin,
}
# The metrics that read no probabilities, chosen by s4al/acquisition/pool.py
RANDOM = "random"  # random_scores: one draw per cell (per image at image level), no network
CORESET = "coreset"  # whole images by k-center greedy on pooled features (s4al/acquisition/coreset.py)


def metric_names() -> tuple[str, ...]:
    """Every name `active.metric` accepts: the registered heuristics, then random and coreset."""
    return (*SCORE_FUNCTIONS, RANDOM, CORESET)


def pixel_scores(name: str, probs: Tensor) -> Tensor:
    """(N, H, W) scores of heuristic `name`."""
    if name not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown acquisition metric '{name}'; known: {', '.join(SCORE_FUNCTIONS)}")
    scores = SCORE_FUNCTIONS[name](probs)
    expected = (probs.shape[0], *probs.shape[2:])
    if tuple(scores.shape) != expected:
        raise ValueError(f"acquisition metric '{name}' gave scores of shape {tuple(scores.shape)} for probabilities "
                         f"of shape {tuple(probs.shape)}: a score function returns (N, H, W) = {expected}")
    return scores
