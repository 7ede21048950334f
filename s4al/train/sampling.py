"""Step-indexed batch sampling: the batch of any training step is a pure function of
(seed, stream, cycle, step), so a run resumed from a checkpoint at step t sees exactly the batches
an uninterrupted run would have seen, and every sample carries its own augmentation seed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from s4al.ssl.replay import ReplayBuffer


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes, unlike hash())."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (1 << 63) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seeded_generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


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


class StepBatches(Sampler[list[tuple[int, int]]]):
    """Yields, for each step in [start, end), `batch_size` (index, augmentation seed) pairs, then,
    when `replay_on(step)`, `batch_size` more drawn uniformly from the replay buffer: the last
    `replay_size` indices this stream produced since `first_step`.

    Under torch.distributed each rank takes its own slice of every step's global batch
    (rank r of R reads stream positions ((step * R + r) * batch_size + j)) and keeps its own buffer."""

    def __init__(
        self,
        stream: Stream,
        batch_size: int,
        start: int,
        end: int,
        first_step: int = 0,
        replay_size: int = 0,
        replay_on: Callable[[int], bool] = lambda step: False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.stream, self.batch_size = stream, batch_size
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

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buffer = ReplayBuffer(max(self.replay_size, 1))
        history_from = max(self.first_step, self.start - (self.replay_size + self.batch_size - 1) // self.batch_size)
        for step in range(history_from, self.start):
            buffer.add(self._drawn(step))
        for step in range(self.start, self.end):
            positions = self._positions(step)
            drawn = self._drawn(step)
            items = [(i, derive_seed(*self.stream.seed_parts, "aug", p)) for p, i in zip(positions, drawn)]
            if self.replay_size and self.replay_on(step) and len(buffer):
                generator = seeded_generator(*self.stream.seed_parts, "replay", step, self.rank)
                chosen = buffer.sample(self.batch_size, generator)
                items += [(i, derive_seed(*self.stream.seed_parts, "replay-aug", p)) for p, i in zip(positions, chosen)]
            buffer.add(drawn)
            yield items
