"""Replay buffer of Balanced ClassMix (paper Sec. 3.3): indices of recently seen unlabelled images."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import torch


class ReplayBuffer:
    """FIFO of the last `capacity` unlabelled pool indices seen (oldest evicted first; an index seen
    twice is held twice, as it was seen twice).

    Per step: `sample` first, then `add` the current batch, so step t replays images seen up to
    step t-1. It stores pool indices, not images: the caller reloads and pseudo-labels them, which
    keeps image, label, annotation mask and confidence aligned.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be at least 1, got {capacity}")
        self._indices: deque[int] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self):
        """The held indices, oldest first."""
        return iter(self._indices)

    def add(self, indices: Iterable[int]) -> None:
        self._indices.extend(int(i) for i in indices)

    def sample(self, k: int, generator: torch.Generator) -> list[int]:
        """k indices drawn uniformly: without replacement when the buffer holds at least k, with
        replacement when it holds fewer, and [] when it is empty (skip the replay loss then)."""
        held = len(self._indices)
        if held == 0:
            return []
        if held >= k:
            positions = torch.randperm(held, generator=generator, device="cpu")[:k]
        else:
            positions = torch.randint(held, (k,), generator=generator, device="cpu")
        return [self._indices[p] for p in positions.tolist()]
