"""Seeds derived from names: every random draw of a run (initial split, batches, augmentation,
mixing masks, random scores) comes from (run seed, what, cycle, step, ...), so it is the same in
any process and after any resume."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes, unlike hash())."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (1 << 63) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seeded_generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))
