"""Step-indexed batch sampling: the batches of any training step are a pure function of
(seed, stream, cycle, step), so a run resumed from a checkpoint at step t sees exactly the batches
an uninterrupted run would have seen, and every sample carries its own augmentation seed.

A step's draw is named: {"labelled": ...} from the labelled stream, {"unlabelled": ..., "replay": ...}
from the pool stream, where the replay batch (Balanced ClassMix, paper Sec. 3.3) is drawn from the
stream's own recent history."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from s4al.seeding import derive_seed, seeded_generator

Items = list[tuple[int, int]]  # (dataset index, augmentation seed) per sample of a batch
Draw = dict[str, Items]  # a step's batches by name


class Stream:
    """An endless sequence of dataset indices: back-to-back seeded permutations of `indices`."""

    def __init__(self, indices: Sequence[int], *seed_parts: int | str):
        if not indices:
            raise ValueError("a sampling stream needs at least one index")
        self.indices = np.asarray(sorted(indices))
        self.seed_parts = seed_parts
        self._perm_number, self._perm = -1, self.indices

    def at(self, position: int) -> int:
        number, offset = divmod(position, len(self.indices))
        if number != self._perm_number:
            rng = np.random.default_rng(derive_seed(*self.seed_parts, number))
            self._perm_number, self._perm = number, rng.permutation(self.indices)
        return int(self._perm[offset])


class ReplayBuffer:
    """FIFO of the last `capacity` dataset indices a stream drew (oldest evicted first; an index
    drawn twice is held twice, as it was seen twice).

    Per step: `sample` first, then `add` the current batch, so step t replays images seen up to
    step t-1. It holds indices, not images: the replay batch is loaded and pseudo-labelled like any
    other, which keeps image, label, annotation mask and confidence aligned."""

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


class StepBatches(Sampler[Draw]):
    """Yields, for each step in [start, end), {name: `batch_size` (index, augmentation seed) pairs},
    and, when `replay_on(step)`, also {"replay": `batch_size` pairs drawn uniformly from the replay
    buffer}: the last `replay_size` indices this stream produced since `first_step`.

    Under torch.distributed each rank takes its own slice of every step's global batch
    (rank r of R reads stream positions ((step * R + r) * batch_size + j)) and keeps its own buffer."""

    def __init__(
        self,
        stream: Stream,
        batch_size: int,
        start: int,
        end: int,
        *,
        name: str,
        first_step: int = 0,
        replay_size: int = 0,
        replay_on: Callable[[int], bool] = lambda step: False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.stream, self.batch_size, self.name = stream, batch_size, name
        self.rank, self.world_size = rank, world_size
        self.start, self.end, self.first_step = start, end, first_step
        self.replay_size, self.replay_on = replay_size, replay_on

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def _positions(self, step: int) -> range:
        first = (step * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def _drawn(self, step: int) -> list[int]:
        return [self.stream.at(p) for p in self._positions(step)]

    def __iter__(self) -> Iterator[Draw]:
        buffer = ReplayBuffer(max(self.replay_size, 1))
        history_from = max(self.first_step, self.start - (self.replay_size + self.batch_size - 1) // self.batch_size)
        for step in range(history_from, self.start):
            buffer.add(self._drawn(step))
        for step in range(self.start, self.end):
            positions = self._positions(step)
            drawn = self._drawn(step)
            draw = {self.name: [(i, derive_seed(*self.stream.seed_parts, "aug", p)) for p, i in zip(positions, drawn)]}
            if self.replay_size and self.replay_on(step) and len(buffer):
                generator = seeded_generator(*self.stream.seed_parts, "replay", step, self.rank)
                chosen = buffer.sample(self.batch_size, generator)
                draw["replay"] = [(i, derive_seed(*self.stream.seed_parts, "replay-aug", p)) for p, i in zip(positions, chosen)]
            buffer.add(drawn)
            yield draw
