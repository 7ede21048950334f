"""A cycle's summary (RUN/cycles/cycle_N.json, what status, report and their figures read): its
training's metrics and what it bought, from the cycle phases and the ledger. Written as the cycle
ends, and again when an import changes what a finished cycle bought (a correction, an answer to a
region skipped before)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable

import numpy as np

from s4al.active.ledger import Ledger, LedgerError
from s4al.active.phases import CyclePhases
from s4al.atomic import atomic_write
from s4al.data.classes import class_pixel_counts
from s4al.errors import S4alWarning
from s4al.run_folder import RunFolder

ImageLabel = Callable[[str], np.ndarray]  # image id -> its (H, W) label in the dataset


def bought(ledger: Ledger, cycle: int, class_names: list[str], image_label: ImageLabel) -> dict:
    """The regions and whole images `cycle` bought, and their labelled pixels per class (void apart)."""
    regions = ledger.answered(cycle)
    images = [record.image_id for record in ledger.images() if record.acquired_cycle == cycle]
    counts = class_pixel_counts([*(ledger.patch(region) for region in regions), *map(image_label, images)])
    histogram = {name: int(counts[k]) for k, name in enumerate(class_names)}
    histogram["void"] = int(counts[len(class_names):].sum())
    return {"regions": len(regions), "skipped_regions": len(ledger.skipped(cycle)), "images": len(images),
            "class_pixels": histogram}


def write_summary(folder: RunFolder, ledger: Ledger, phases: CyclePhases, cycle: int, class_names: list[str],
                  image_label: ImageLabel) -> None:
    summary = {"cycle": cycle, **phases.metrics(cycle), "bought": bought(ledger, cycle, class_names, image_label)}
    path = folder.cycle_summary_path(cycle)
    path.parent.mkdir(exist_ok=True)
    with atomic_write(path, "w") as file:  # report and summaries() read it while a run goes on
        file.write(json.dumps(summary, indent=2))


def _no_whole_images(image_id: str) -> np.ndarray:
    raise AssertionError(f"{image_id}: a cycle that asked regions bought no whole image")


def rewrite_summaries(folder: RunFolder, ledger: Ledger, region_ids: Iterable[int], class_names: list[str]) -> list[int]:
    """The summaries of the finished cycles that asked `region_ids`, written again from the ledger
    (after an import changed those regions' answers); returns those cycles."""
    changed = set(region_ids)
    cycles = sorted({region.cycle for region in ledger.regions() if region.region_id in changed})
    with CyclePhases(ledger) as phases:
        finished = [cycle for cycle in cycles if folder.cycle_summary_path(cycle).exists()]
        for cycle in finished:
            try:
                write_summary(folder, ledger, phases, cycle, class_names, _no_whole_images)
            except LedgerError as err:  # what was imported stays: only the summary waits
                warnings.warn(f"the summary of cycle {cycle} ({folder.cycle_summary_path(cycle)}) is not written "
                              f"again: {err}", S4alWarning)
    return finished
