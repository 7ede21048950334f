"""Importing painted answers into the label ledger: validate everything, then write in one call.

An answer file is a Label Studio JSON export or a folder of class-id PNGs (IMAGE_ID.png, 255 where
unpainted). A region counts as answered as soon as one of its pixels is painted; its unpainted
pixels are stored as void (255), which, as with the ground-truth oracle, still counts as labelled
(the paper counts void as labelling information). A region with no painted pixel stays asked, so a
partial answer is fine. Painted pixels outside the regions being answered are ignored and reported.

Refused, with nothing written: an unreadable file, an image the run does not have, a class it does
not know, a mask of the wrong size, a task addressed to a region that was never asked for its
image, the same image answered twice, and a file that answers no asked region at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s4al.active.ledger import LEDGER_FILENAME, Ledger, LedgerError, Region
from s4al.annotation.label_studio import read_export
from s4al.annotation.masks import UNPAINTED, AnswerError, PaintedImage, read_png_folder

MAX_PROBLEMS_SHOWN = 10


@dataclass
class ImportReport:
    by: str  # 'label-studio' or 'png-folder'
    answered: list[int] = field(default_factory=list)  # region ids
    void_pixels: int = 0  # unpainted pixels inside the answered regions, stored as void
    ignored_pixels: dict[str, int] = field(default_factory=dict)  # image id -> painted pixels ignored
    still_asked: int = 0  # regions of the run still waiting for an answer


def import_answers(run_dir: Path, answers_path: Path) -> ImportReport:
    """Reads `answers_path`, validates it against the run's ledger and writes every answer in one
    `Ledger.answer_many` call; raises AnswerError (nothing written) if anything is wrong."""
    run_dir, answers_path = Path(run_dir), Path(answers_path)
    if not (run_dir / LEDGER_FILENAME).is_file():
        raise AnswerError(f"{run_dir}: not a run folder (no {LEDGER_FILENAME})")
    with Ledger(run_dir / LEDGER_FILENAME, readonly=True) as ledger:  # a refusal must not touch a byte
        painted, by = _read(answers_path, ledger.get_meta("classes"))
        report = ImportReport(by)
        answers = _answers(ledger, painted, report)
    if not answers:
        raise AnswerError(f"{answers_path}: nothing to answer: no painted pixel lies in a region still asked")
    with Ledger(run_dir / LEDGER_FILENAME) as ledger:
        try:
            ledger.answer_many(answers, by=by)  # validates again, under the write lock
        except LedgerError as err:
            raise AnswerError(f"{answers_path}: {err}") from None
        report.still_asked = len(ledger.asked())
    return report


def _read(path: Path, class_names: Sequence[str]) -> tuple[Iterable[PaintedImage], str]:
    if path.is_dir():
        return read_png_folder(path), "png-folder"
    if path.is_file():
        return read_export(path, class_names), "label-studio"
    raise AnswerError(f"{path}: no such file or folder")


def _answers(ledger: Ledger, painted: Iterable[PaintedImage], report: ImportReport) -> list[tuple[int, np.ndarray]]:
    """The (region id, label patch) answers of every painted image; any problem refuses the import.
    Only the patches are kept, so memory does not grow with the images' full-size maps."""
    num_classes = len(ledger.get_meta("classes"))
    sizes = {record.image_id: (record.height, record.width) for record in ledger.images()}
    regions = {region.region_id: region for region in ledger.regions()}
    problems: list[str] = []
    seen: dict[str, str] = {}
    answers = []
    for image in painted:
        image_problems = _problems(image, sizes, regions, num_classes)
        if image.image_id in seen:
            image_problems.append(
                f"{image.source}: image '{image.image_id}' is answered twice (also in {seen[image.image_id]})")
        seen[image.image_id] = image.source
        problems += image_problems
        if not image_problems:
            answers += _answer_image(image, _addressed(image, regions), report)
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise AnswerError(f"answers refused, nothing written: {shown}{more}")
    return answers


def _problems(image: PaintedImage, sizes: dict, regions: dict[int, Region], num_classes: int) -> list[str]:
    if image.image_id not in sizes:
        return [f"{image.source}: image '{image.image_id}' is not in this run"]
    problems = []
    if image.labels.shape != sizes[image.image_id]:
        problems.append(f"{image.source}: mask is {image.labels.shape[0]}x{image.labels.shape[1]}, "
                        f"image '{image.image_id}' is {sizes[image.image_id][0]}x{sizes[image.image_id][1]} (HxW)")
    unknown = np.unique(image.labels[(image.labels >= num_classes) & (image.labels != UNPAINTED)])
    if unknown.size:
        problems.append(f"{image.source}: unknown class ids {unknown.tolist()} (classes are 0..{num_classes - 1}, "
                        f"{UNPAINTED} = unpainted)")
    problems += [
        f"{image.source}: region {region_id} was never asked for image '{image.image_id}'"
        for region_id in image.region_ids or ()
        if region_id not in regions or regions[region_id].image_id != image.image_id
    ]
    return problems


def _addressed(image: PaintedImage, regions: dict[int, Region]) -> list[Region]:
    """The image's still asked regions this answer addresses: those it lists, or else all of them."""
    if image.region_ids is None:
        addressed = [region for region in regions.values() if region.image_id == image.image_id]
    else:
        addressed = [regions[region_id] for region_id in image.region_ids]
    return [region for region in addressed if region.state == "asked"]


def _answer_image(image: PaintedImage, addressed: list[Region], report: ImportReport) -> list[tuple[int, np.ndarray]]:
    """Crops the answers of the addressed regions with painted pixels; counts the rest."""
    answered_area = np.zeros(image.labels.shape, dtype=bool)
    answers = []
    for region in addressed:
        y0, x0, y1, x1 = region.box
        patch = image.labels[y0:y1, x0:x1]
        if (patch != UNPAINTED).any():
            answers.append((region.region_id, patch.copy()))
            answered_area[y0:y1, x0:x1] = True
            report.answered.append(region.region_id)
            report.void_pixels += int((patch == UNPAINTED).sum())
    ignored = int(((image.labels != UNPAINTED) & ~answered_area).sum())
    if ignored:
        report.ignored_pixels[image.image_id] = ignored
    return answers
