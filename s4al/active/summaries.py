"""A cycle's summary (RUN/cycles/cycle_N.json, what status, report and their figures read): its
training's metrics and what it bought, from the cycle phases and the ledger. Written as the cycle
ends, and again when an import changes what a finished cycle bought (a correction, an answer to a
region skipped before)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from s4al.active.ledger import CLASSES_META, SUMMARIES_DUE, Ledger, LedgerError
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


@contextmanager
def summaries_rewritten(folder: RunFolder, ledger: Ledger, region_ids: Iterable[int]) -> Iterator[None]:
    """Around a write that changes the answers of `region_ids`: the cycles that asked them are marked
    due (SUMMARIES_DUE) before it, and their summaries, where finished, written again from the ledger
    after it. A kill in between leaves the mark, which the next import, skip or run honours."""
    changed = set(region_ids)
    cycles = {region.cycle for region in ledger.regions() if region.region_id in changed} if changed else set()
    if cycles:
        ledger.set_meta(SUMMARIES_DUE, sorted(cycles | set(ledger.get_meta(SUMMARIES_DUE, []))))
    yield
    rewrite_due_summaries(folder, ledger)


def rewrite_due_summaries(folder: RunFolder, ledger: Ledger) -> None:
    """The summaries of the cycles marked due, where finished, written again from the ledger; the
    mark cleared once all are (one that cannot be is said, and stays due)."""
    due = ledger.get_meta(SUMMARIES_DUE, [])
    if not due:
        return
    with CyclePhases(ledger) as phases:
        for cycle in [cycle for cycle in due if folder.cycle_summary_path(cycle).exists()]:
            try:
                write_summary(folder, ledger, phases, cycle, ledger.get_meta(CLASSES_META), _no_whole_images)
            except LedgerError as err:  # what was imported stays: only the summary waits
                warnings.warn(f"the summary of cycle {cycle} ({folder.cycle_summary_path(cycle)}) is not written "
                              f"again: {err}", S4alWarning)
                return
    ledger.set_meta(SUMMARIES_DUE, [])
