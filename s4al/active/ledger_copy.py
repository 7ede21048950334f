"""What the other ranks of a torchrun job know of the ledger: rank 0's reading of it, sent to them.

Under torchrun rank 0 alone opens the ledger file, labels (s4al/active/ledger.py) and phases
(s4al/active/phases.py) alike. After each of its writes it sends every other rank a copy of what
the cycle reads: the images, the regions and each cycle's phase. So no rank reads the SQLite file
from another host, where a network filesystem's locks may not hold across hosts, and every
rank decides what comes next from exactly what rank 0 read. Answered patches are PNG files in the
run folder, which every rank reads itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s4al.active.ledger import ImageRecord, Ledger, Region, RegionsByState, read_patch
from s4al.active.phases import CyclePhases


@dataclass(frozen=True)
class LedgerCopy(RegionsByState):
    """The reads of Ledger that the cycle's ranks make, from a copy."""

    run_dir: Path
    image_records: tuple[ImageRecord, ...]
    region_records: tuple[Region, ...]

    def images(self) -> list[ImageRecord]:
        return list(self.image_records)

    def regions(self, cycle: int | None = None, state: str | None = None) -> list[Region]:
        return [r for r in self.region_records if cycle in (None, r.cycle) and state in (None, r.state)]

    def patch(self, region: Region) -> np.ndarray:
        return read_patch(self.run_dir, region)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class PhasesCopy:
    """The reads of CyclePhases that the cycle's ranks make, from a copy."""

    phases: dict[int, str]

    def phase(self, cycle: int) -> str | None:
        return self.phases.get(cycle)

    def last_cycle(self) -> int | None:
        return max(self.phases, default=None)

    def close(self) -> None:
        pass


def copy_of(ledger: Ledger, phases: CyclePhases) -> tuple[LedgerCopy, PhasesCopy]:
    """Rank 0's reading of its ledger and phases, to send."""
    last = phases.last_cycle()
    cycles = range(last + 1) if last is not None else range(0)
    return (LedgerCopy(ledger.run_dir, tuple(ledger.images()), tuple(ledger.regions())),
            PhasesCopy({cycle: phases.phase(cycle) for cycle in cycles if phases.phase(cycle) is not None}))
