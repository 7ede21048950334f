"""Importing painted answers into the label ledger: validate everything, then write in one call.

An answer file is a Label Studio JSON export or a folder of class-id PNGs (IMAGE_ID.png, 255 where
unpainted). Each Label Studio task lists the regions it asks (data.region_ids) and its cycle, so
one project can hold the tasks of every cycle and its full export can be imported after each one:
a task answers only the regions it lists, and a task whose regions are all answered or skipped
already is left alone (counted), unless it now paints an answered region otherwise (a reviewer's fix):
that later answer replaces the earlier one, unless it was painted before it (an older export or mask
imported again, by the time Label Studio saved the annotation or the mask file was written): that
region is left as it is, and named. A PNG answers every region of its image. A mask file is known
again by its size and content digest (its time may stay the same through an edit), an export's task
by its save time. An answered region whose stored answer is lost (its file missing or unreadable)
takes the answer given for it again, whenever that was painted.

The rule for a region still asked:
- answered when at least MIN_PAINTED_SHARE of its pixels are painted; its unpainted pixels are
  stored as void (255), which, as with the ground-truth oracle, still counts as labelled;
- skipped when its Label Studio task was skipped (the Skip button), or with `s4al skip`; a skipped
  region painted enough later (the task reopened and submitted) is answered then, but not by a
  painting from before a skip by name (an older export or mask imported again) or a withdrawal, and
  the painting turned down saved again later unchanged, leave the skip standing, named; `s4al skip`
  of every region still asked passes over answers not yet imported;
- otherwise left asked, and reported with its painted share.
Painted pixels outside the regions an answer addresses are ignored and reported, and so are
rectangles drawn by hand and files in a PNG folder that are not masks. An answer kept though its
task is gone or skipped, and a painting a skip overrules, are said by the import that finds them, not
by the next one if it finds them too; an export whose tasks were painted before the answers stored
for them is said to be older, and the answers it lacks are not taken for deleted tasks.

Refused, with nothing written: a run folder in use by another process, an unreadable file, an image
the run does not have, a class it does not know, a mask of the wrong size or not a PNG, a task
addressed to a region that was never asked for its image or in another cycle, or whose asked
rectangle is not where this run asked that region, a task of another run (by the run id its task
carries), a region answered or skipped two ways by two tasks (alike, it counts once), and a file with
nothing to import.
"""

from __future__ import annotations

import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from s4al.active.ledger import (
    CLASSES_META, COLOURS_META, MASK_READING, PROJECT_META, RUN_ID, SAID_META, SUMMARIES_DUE, LabelWriteError, Ledger,
    LedgerError, Region, painting_digest,
)
from s4al.active.phases import CyclePhases
from s4al.acquisition.regions import box_masks
from s4al.active.summaries import rewrite_due_summaries, summaries_rewritten
from s4al.annotation.label_studio import BY_LABEL_STUDIO, LeftOut, read_export
from s4al.config import file_digest
from s4al.annotation.masks import (
    MIN_PAINTED_SHARE, UNPAINTED, AnswerError, PaintedImage, png_masks, read_png_masks,
)
from s4al.data.folder import ColourDecoder
from s4al.run_folder import RunFolder
from s4al.text import first_of, named, shell

MAX_PROBLEMS_SHOWN = 10
BY_PNG_FOLDER = "png-folder"
# who skipped, in the ledger: `s4al skip --region ID` declines the regions named, so an answer painted
# before it stays overruled; `s4al skip` alone passes over whatever has no answer yet, so it does not
BY_SKIP_NAMED = "s4al skip"
BY_SKIP_UNANSWERED = "s4al skip (every region still asked)"


@dataclass
class ImportReport:
    by: str  # 'label-studio' or 'png-folder'
    answered: list[int] = field(default_factory=list)  # region ids
    skipped: list[int] = field(default_factory=list)  # region ids of skipped tasks
    not_answered: dict[int, float] = field(default_factory=dict)  # region id -> painted share, below the minimum
    already_imported: int = 0  # tasks (or PNGs) whose regions were all answered or skipped before, unchanged
    corrected: list[int] = field(default_factory=list)  # answered region ids whose earlier answer is replaced
    repaired: list[int] = field(default_factory=list)  # answered region ids whose stored answer was lost
    # (its file missing or unreadable), written again from this answer
    edits_under_minimum: dict[int, float] = field(default_factory=dict)  # answered region id -> painted share
    # of an edit painting it otherwise but under the minimum: its earlier answer stays
    unskipped: list[int] = field(default_factory=list)  # of `answered`: the regions skipped before
    skip_kept: list[int] = field(default_factory=list)  # skipped region ids painted here, but before the skip
    # (or as the answer withdrawn)
    turned_down: dict[int, str] = field(default_factory=dict)  # of skip_kept: region id -> painting_digest of
    # the painting here, for the ledger to know it again whenever it is saved later
    outdated: list[int] = field(default_factory=list)  # answered region ids painted otherwise here, but
    # before their stored answer was: left as they are
    void_pixels: int = 0  # unpainted pixels inside the answered regions, stored as void
    ignored_pixels: dict[str, int] = field(default_factory=dict)  # image id -> painted pixels outside its regions
    hand_drawn: dict[str, int] = field(default_factory=dict)  # task -> rectangles drawn by hand, ignored
    ignored_files: list[str] = field(default_factory=list)  # names in a PNG folder that are not masks
    skipped_since: list[int] = field(default_factory=list)  # answered region ids whose task was skipped since
    # their answer was painted: the answers stay
    annotation_gone: list[int] = field(default_factory=list)  # answered from Label Studio, but only tasks
    # without an annotation ask them in this export (deleted there since?): the answers stay
    task_gone: list[int] = field(default_factory=list)  # answered from Label Studio by a task this export does
    # not hold (deleted there since, or an export of part of the project?): the answers stay
    edits_drafted: list[str] = field(default_factory=list)  # annotated tasks with a draft saved since (an
    # edit not submitted: the annotation is read as submitted)
    drafted: list[str] = field(default_factory=list)  # tasks asking regions still asked, with a draft saved
    # in Label Studio but nothing submitted
    older: tuple[str, str] | None = None  # of an export painted before answers imported earlier: when its
    # newest painting was, and the newest stored answer's
    said_before: dict[str, list[int]] = field(default_factory=dict)  # SAID_ONCE kind -> the region ids the
    # import before this one said
    read: int = 0  # tasks (or masks) submitted or skipped in the file, whatever they did
    still_asked: int = 0  # regions of the run still waiting for an answer

    def said_now(self) -> dict[str, list[int]]:
        """The region ids of each SAID_ONCE kind this import finds (of those it finds any of)."""
        return {kind: sorted(getattr(self, kind)) for kind in SAID_ONCE if getattr(self, kind)}

    def not_said_before(self, kind: str) -> list[int]:
        """Of the regions of SAID_ONCE `kind`, those the import before this one did not say."""
        said = set(self.said_before.get(kind, ()))
        return [region_id for region_id in getattr(self, kind) if region_id not in said]


# what an import keeps as it was of a region, whatever the painting, said once: the import that finds it
# says it, the next one finding it too does not (an edit under the minimum, or a painting older than the
# answer, is of one painting: said each time)
SAID_ONCE = ("skip_kept", "annotation_gone", "task_gone", "skipped_since")


def import_answers(run_dir: Path, answers_path: Path, dry_run: bool = False) -> ImportReport:
    """Reads `answers_path`, validates it against the run's ledger and writes every answer and skip
    in one transaction each (with `dry_run`, nothing: the report says what the import would do);
    raises AnswerError (nothing written) if anything is wrong, and RunFolderError at once if another
    process (a run) holds the run folder."""
    run_dir, answers_path = Path(run_dir), Path(answers_path)
    folder = RunFolder(run_dir)
    ledger_path = folder.ledger_file()
    with folder.locked():  # not while a run writes the ledger, even with nothing to write
        with Ledger(ledger_path, readonly=True) as ledger:  # a refusal must not touch a byte
            sizes = {record.image_id: (record.height, record.width) for record in ledger.images()}
            left_out = LeftOut()  # the file's tasks without an annotation, as read
            painted, report = _read(answers_path, ledger.get_meta(CLASSES_META), ledger.get_meta(COLOURS_META),
                                    (ledger.get_meta(MASK_READING) or {}).get("ignore_color"), sizes, left_out)
            answers, painted_at, source_digests = _answers(ledger, sizes, painted, report, left_out)
            _refuse_label_changes_mid_training(folder, ledger, report, answers_path)
            newly_answered = len(report.answered) - len(report.unskipped)
            report.still_asked = len(ledger.asked()) - newly_answered - len(report.skipped)
            report.said_before = ledger.get_meta(SAID_META) or {}
            summaries_due = bool(ledger.get_meta(SUMMARIES_DUE))  # by an import or skip stopped before it wrote them
        if not answers and not report.skipped:
            kept = report.already_imported or report.skip_kept or report.edits_under_minimum or report.outdated
            if report.read and not kept:  # no answer in what was read
                raise AnswerError(f"{answers_path}: nothing to answer: {_why_nothing(report)}")
            if not dry_run and (report.said_now() != report.said_before or report.turned_down or summaries_due):
                with Ledger(ledger_path) as ledger:
                    ledger.turn_down(report.turned_down)
                    ledger.set_meta(SAID_META, report.said_now())
                    rewrite_due_summaries(folder, ledger)
            return report
        if dry_run:
            return report
        # a finished cycle's summary says what it bought: the answers it holds now
        changed = [*report.corrected, *report.unskipped, *report.repaired]
        with Ledger(ledger_path) as ledger, summaries_rewritten(folder, ledger, changed):
            try:
                ledger.answer_many(answers, by=report.by,
                                   overwrite=bool(report.corrected or report.unskipped or report.repaired),
                                   painted_at=painted_at, source_digests=source_digests)
                ledger.skip(report.skipped, by=report.by, skipped_at=painted_at)
                ledger.turn_down(report.turned_down)
            except LabelWriteError as err:
                raise AnswerError(f"{err.path}: could not write the label patch ({err.reason}); nothing was imported "
                                  f"from {answers_path}: make room on the disk (or make the folder writable) and "
                                  "import again") from None
            except LedgerError as err:
                raise AnswerError(f"{answers_path}: {err}") from None
            report.still_asked = len(ledger.asked())
            ledger.set_meta(SAID_META, report.said_now())
    return report


def _refuse_label_changes_mid_training(folder: RunFolder, ledger: Ledger, report: ImportReport,
                                       answers_path: Path) -> None:
    """A correction (or an answer to a region skipped before) changes the labels a part-trained cycle
    trains with: its resume would no longer continue the same training. The export keeps the fix, to
    be imported once the cycle has trained."""
    if not (report.corrected or report.unskipped):
        return
    last = part_trained_cycle(folder, ledger)
    if last is None:
        return
    what = [f"{verb} {named('region', [str(i) for i in ids])} {state} before" for verb, ids, state in
            (("corrects", report.corrected, "answered"), ("answers", report.unskipped, "skipped")) if ids]
    raise AnswerError(f"{answers_path}: {' and '.join(what)}, while cycle {last} has trained part-way with the "
                      f"labels as they were: resume the run until cycle {last} has trained (s4al run --resume "
                      f"{shell(folder.path)}), then import again; nothing written")


def part_trained_cycle(folder: RunFolder, ledger: Ledger) -> int | None:
    """The cycle that has checkpointed part of its training, if one has: its labels are fixed until
    it has trained (a resume must train on with the labels it began with)."""
    with CyclePhases(ledger) as phases:
        last = phases.last_cycle()
        trained_part = last is not None and phases.phase(last) == "train" and folder.checkpoint_path(last).exists()
    return last if trained_part else None


def _why_nothing(report: ImportReport) -> str:
    if report.not_answered:
        reasons = [_not_answered_reason(region_id, share) for region_id, share in report.not_answered.items()]
        return first_of(reasons, MAX_PROBLEMS_SHOWN, "; ")
    return "no painted pixel lies in a region still asked"


def _not_answered_reason(region_id: int, share: float) -> str:
    return f"region {region_id} is {100 * share:.1f}% painted (an answer needs {100 * MIN_PAINTED_SHARE:.0f}%)"


def _read(path: Path, class_names: Sequence[str], class_colours: list | None, void_colour: list | None, sizes: dict,
          left_out: LeftOut) -> tuple[Iterable[PaintedImage], ImportReport]:
    """The painted images of the answer file or folder, to be read, and the report to fill;
    `class_colours`: the run's (None in a run made before the ledger kept them), which masks may
    paint, and `void_colour`, its dataset's colour of void, if it has one (unpainted in a mask);
    `left_out` collects an export's tasks without an annotation."""
    if path.is_dir():
        masks, ignored = png_masks(path)
        void = {} if void_colour is None else {tuple(void_colour): UNPAINTED}
        colours = None if class_colours is None else ColourDecoder(
            {tuple(colour): k for k, colour in enumerate(class_colours)} | void)
        return read_png_masks(masks, colours), ImportReport(BY_PNG_FOLDER, ignored_files=ignored)
    if path.is_file() and path.suffix.lower() == ".png":
        raise AnswerError(f"{path}: one PNG; ANSWERS is a folder of IMAGE_ID.png masks or a Label Studio JSON "
                          f"export: give its folder, {path.parent}")
    if path.is_file():
        return read_export(path, class_names, sizes, left_out), ImportReport(BY_LABEL_STUDIO)
    raise AnswerError(f"{path}: no such file or folder")


def _answers(ledger: Ledger, sizes: dict[str, tuple[int, int]], painted: Iterable[PaintedImage],
             report: ImportReport, left_out: LeftOut,
             ) -> tuple[list[tuple[int, np.ndarray]], dict[int, str | None], dict[int, str | None]]:
    """The (region id, label patch) answers of every painted image (of the ledger's images of
    `sizes`), when each was painted and the digest of the mask file it was read from; any problem
    refuses the import. Only the patches are kept, so memory does not grow with the images'
    full-size maps."""
    num_classes = len(ledger.get_meta(CLASSES_META))
    regions = {region.region_id: region for region in ledger.regions()}
    of_image: dict[str, list[Region]] = defaultdict(list)  # in region id order
    for region in regions.values():
        of_image[region.image_id].append(region)
    problems: list[str] = []
    taken: dict[int, tuple[str, np.ndarray | None]] = {}  # region id -> the answer taking it, its patch (None: skip)
    # answered region id -> the first answer painting it, its patch (None: the stored answer)
    repainted: dict[int, tuple[str, np.ndarray | None]] = {}
    answers = []
    painted_at: dict[int, str | None] = {}
    source_digests: dict[int, str | None] = {}
    run_id = ledger.get_meta(RUN_ID)
    annotated: set[int] = set()  # the regions some painting of this file addresses
    newest: str | None = None  # the file's newest painting time, of those that tell it
    same_name = {unicodedata.normalize("NFC", image_id): image_id for image_id in sizes}
    by_casefold = {image_id.casefold(): image_id for image_id in sizes}
    for image in painted:
        report.read += 1
        if image.painted_at is not None and (newest is None or _earlier(newest, image.painted_at)):
            newest = image.painted_at
        if image.image_id not in sizes:  # a file name in another Unicode form (macOS writes NFD) names it too
            image = replace(image, image_id=same_name.get(unicodedata.normalize("NFC", image.image_id),
                                                          image.image_id))
        image_problems = _region_problems(image, sizes, regions, run_id, by_casefold)
        addressed = [] if image_problems else _addressed(image, regions, of_image)
        annotated.update(region.region_id for region in addressed)
        # a mask's source is its file's path
        digest = _file_digest(image.source) if report.by == BY_PNG_FOLDER and not image_problems else None
        if _imported_before(ledger, image, digest, addressed):  # left unread: decoding is most of an import's time
            for region in addressed:  # it paints them as stored
                _check_repainted(ledger, region, image.source, None, repainted, problems)
            report.already_imported += 1
            continue
        try:  # a task's brushes are decoded here
            image_problems = image_problems or _label_problems(image, sizes[image.image_id], num_classes)
        except AnswerError as err:
            image_problems = [str(err)]
        problems += image_problems
        if image_problems:
            continue
        corrections = _corrections(ledger, image, digest, addressed, report, repainted, problems)
        said_here = any(region.region_id in report.edits_under_minimum or region.region_id in report.outdated
                        for region in addressed)
        report.skipped_since += _skipped_since_answered(image, addressed)
        overruled = _overruled_by_skip(image, addressed)
        report.skip_kept += overruled
        report.turned_down.update((region.region_id, painting_digest(_painted(image, region)[0]))
                                  for region in addressed if region.region_id in overruled)
        if addressed and not corrections and not _answers_left(image, addressed):
            if len(overruled) < len(addressed) and not said_here:  # a painting its own line names is not
                report.already_imported += 1  # "left alone"; nor a task that only skips overrule
            continue
        skips = [(region_id, None) for region_id in _skips(image, addressed)]
        image_answers = _take(image, _answer_image(image, addressed, report) + corrections + skips, regions, taken,
                              report, problems)
        answers += image_answers
        painted_at.update((region_id, image.painted_at) for region_id, _ in image_answers)
        for region_id, _ in skips:  # when each was skipped: the first task taking it tells
            painted_at.setdefault(region_id, image.painted_at)
        source_digests.update((region_id, digest) for region_id, _ in image_answers)
    problems = left_out.problems + problems
    if len(problems) == 1:
        raise AnswerError(problems[0] if left_out.problems else f"answers refused, nothing written: {problems[0]}")
    if problems:
        raise AnswerError(f"answers refused, nothing written: {first_of(problems, MAX_PROBLEMS_SHOWN, '; ')}")
    _settle(report, regions, taken, left_out, annotated, newest, (ledger.get_meta(PROJECT_META) or {}).get("since"))
    return answers, painted_at, source_digests


def _settle(report: ImportReport, regions: dict[int, Region], taken: dict, left_out: LeftOut,
            annotated: set[int], newest: str | None, project_since: str | None) -> None:
    """The report's lists once the whole file is read: a region counted once however many copies of
    its task the file holds, and what the file's tasks without an annotation leave asked or answered.
    A region answered from Label Studio whose task the file lacks is not taken for one deleted there
    where it was painted after the file's newest painting (the file is older), or imported before
    the run's project was made (`project_since`: its tasks are in the project `--new-project` replaced)."""
    for region_id in taken:  # answered by another task of the same image
        report.not_answered.pop(region_id, None)
    # copies of a task name a region once, and not as kept where another copy answers it
    report.skip_kept, report.outdated, report.skipped_since = (
        [region_id for region_id in dict.fromkeys(ids) if region_id not in taken]
        for ids in (report.skip_kept, report.outdated, report.skipped_since))
    report.turned_down = {region_id: digest for region_id, digest in report.turned_down.items()
                          if region_id in report.skip_kept and regions[region_id].source_digest is None}
    report.repaired = list(dict.fromkeys(report.repaired))  # copies of a task repair a region once
    answered_there = [region for region in regions.values()
                      if region.state == "answered" and region.answered_by == BY_LABEL_STUDIO]
    later = [region.painted_at for region in answered_there  # answers a task of the file painted before
             if region.region_id in annotated and region.painted_at is not None and newest is not None
             and _earlier(newest, region.painted_at)]
    if later and report.by == BY_LABEL_STUDIO:
        report.older = (newest, max(later, key=datetime.fromisoformat))
    by_label_studio = {region.region_id for region in answered_there
                       if not (report.older and _earlier(newest, region.painted_at or newest))
                       and (project_since is None or not _earlier(region.answered_at, project_since))}
    report.annotation_gone = sorted(by_label_studio & (left_out.regions - annotated))
    if report.by == BY_LABEL_STUDIO:
        report.task_gone = sorted(by_label_studio - annotated - left_out.regions)
    report.edits_drafted = list(left_out.edits_drafted)
    report.drafted = [task for task, region_ids in left_out.drafted
                      if any(i in regions and regions[i].state == "asked" for i in region_ids)]


def _region_problems(image: PaintedImage, sizes: dict, regions: dict[int, Region], run_id: str | None,
                     by_casefold: Mapping[str, str]) -> list[str]:
    """What is wrong with the image and regions an answer addresses, before its painting is read;
    `by_casefold`: the run's image ids by their casefold."""
    if image.image_id not in sizes:
        other_case = by_casefold.get(image.image_id.casefold())
        hint = f" (names are case-sensitive: this run has '{other_case}')" if other_case else ""
        return [f"{image.source}: image '{image.image_id}' is not one of this run's train images{hint}"]
    if image.run_id is not None and run_id is not None and image.run_id != run_id:
        return [f"{image.source}: a task of another run (run id {image.run_id[:8]}, this run's is {run_id[:8]}): "
                "import the export of this run's own project"]
    problems = []
    for region_id in image.region_ids or ():
        if region_id not in regions or regions[region_id].image_id != image.image_id:
            problems.append(f"{image.source}: region {region_id} was never asked for image '{image.image_id}'")
        elif image.cycle is not None and regions[region_id].cycle != image.cycle:
            problems.append(f"{image.source}: region {region_id} was asked in cycle {regions[region_id].cycle}, "
                            f"the task is of cycle {image.cycle}")
        elif image.asked_boxes.get(region_id, regions[region_id].box) != regions[region_id].box:
            problems.append(f"{image.source}: region {region_id} is at {image.asked_boxes[region_id]} in this task, "
                            f"but this run asked region {region_id} at {regions[region_id].box}: "
                            "answers of another run?")
    return problems


def _label_problems(image: PaintedImage, size: tuple[int, int], num_classes: int) -> list[str]:
    problems = []
    if image.labels.shape != size:
        problems.append(f"{image.source}: mask is {image.labels.shape[0]}x{image.labels.shape[1]}, "
                        f"image '{image.image_id}' is {size[0]}x{size[1]} (HxW) in this run, as its query package's "
                        "images/ show it (a run with dataset.resize holds its images resized)")
    unknown = np.unique(image.labels[(image.labels >= num_classes) & (image.labels != UNPAINTED)])
    if unknown.size:
        problems.append(f"{image.source}: unknown class ids {unknown.tolist()} (classes are 0..{num_classes - 1}, "
                        f"{UNPAINTED} = unpainted)")
    return problems


def _file_digest(path: str) -> str | None:
    """'SIZE:SHA256' of the file at `path`, which any change of its content changes; None where it
    cannot be read (its decoding says why)."""
    try:
        return f"{os.path.getsize(path)}:{file_digest(Path(path))}"
    except OSError:
        return None


def _imported_before(ledger: Ledger, image: PaintedImage, digest: str | None, addressed: list[Region]) -> bool:
    """Whether `image` is the painting every region it addresses was answered with, and each answer
    is still stored: imported before and unchanged since (an export or a folder of masks imported
    again). `digest`: of the mask file `image` is, None for an export's task. A stored file is only
    looked for, not decoded: that is most of an import's time (a damaged one is named by the run)."""
    return (bool(addressed)
            and all(region.state == "answered" and _same_painting(image, digest, region) for region in addressed)
            and all(ledger.has_patch(region) for region in addressed))


def _same_painting(image: PaintedImage, digest: str | None, region: Region) -> bool:
    """Whether `image` is the painting answered `region` was answered with: a mask file by its
    content digest, or else (a Label Studio task, or an answer stored before digests were kept) by
    when it was painted."""
    if digest is not None and region.source_digest is not None:
        return digest == region.source_digest
    return image.painted_at is not None and region.painted_at == image.painted_at


def _addressed(image: PaintedImage, regions: dict[int, Region], of_image: dict[str, list[Region]]) -> list[Region]:
    """The image's regions this answer addresses, in any state: those it lists, or else all of them
    (`of_image`: every region by image)."""
    if image.region_ids is None:
        return list(of_image.get(image.image_id, ()))
    return [regions[region_id] for region_id in image.region_ids]


def _answers_left(image: PaintedImage, addressed: list[Region]) -> bool:
    """Whether some addressed region is still asked, or was skipped and is painted enough since."""
    return any(region.state == "asked" or (region.state == "skipped" and not image.declined
                                           and _painted(image, region)[1] >= MIN_PAINTED_SHARE
                                           and not _skip_stands(image, region))
               for region in addressed)


def _earlier(time: str, other: str) -> bool:
    """Whether UTC time `time` is before `other` (ISO 8601, of any precision)."""
    return datetime.fromisoformat(time) < datetime.fromisoformat(other)


def _skip_stands(image: PaintedImage, region: Region) -> bool:
    """Whether skipped `region` stays skipped though `image` paints it enough: `image` was painted
    before the skip, or paints it as the painting the skip turned down (a withdrawn answer, or one an
    import found painted before the skip: its digest kept), whenever saved again."""
    return _painted_before_skip(image, region) or (
        region.source_digest is not None and painting_digest(_painted(image, region)[0]) == region.source_digest)


def _painted_before_skip(image: PaintedImage, region: Region) -> bool:
    """Whether `image` was painted before skipped `region` was skipped: a mask or export from before
    the skip, which the skip overrules. The time of a task skipped in Label Studio is its own (the
    clock its paintings have; its import may come long after a later painting), that of a skip by
    name its command's. Unknown when the answer tells no time."""
    skipped_at = region.painted_at or region.answered_at
    if image.painted_at is None or skipped_at is None or region.answered_by == BY_SKIP_UNANSWERED:
        return False
    return _earlier(image.painted_at, skipped_at)


def _painted(image: PaintedImage, region: Region) -> tuple[np.ndarray, float]:
    """What `image` paints in `region` (a view into its map), and the share of it painted."""
    y0, x0, y1, x1 = region.box
    patch = image.labels[y0:y1, x0:x1]
    return patch, float((patch != UNPAINTED).mean())


def _answer_image(image: PaintedImage, addressed: list[Region], report: ImportReport) -> list[tuple[int, np.ndarray]]:
    """Crops the answers of the addressed regions still asked (or skipped) that are painted enough;
    reports the rest, the painting outside the addressed regions and rectangles drawn by hand."""
    addressed_area = box_masks([[region.box for region in addressed]], *image.labels.shape)[0].numpy()
    answers = []
    for region in addressed:
        patch, share = _painted(image, region)
        if region.state == "answered" or image.declined:
            continue
        if region.state == "skipped" and share >= MIN_PAINTED_SHARE and _skip_stands(image, region):
            continue  # named by _overruled_by_skip
        if share >= MIN_PAINTED_SHARE:
            answers.append((region.region_id, patch.copy()))
        elif region.state == "asked":
            report.not_answered[region.region_id] = share
    ignored = int(((image.labels != UNPAINTED) & ~addressed_area).sum())
    if ignored:
        report.ignored_pixels[image.image_id] = ignored
    if image.hand_drawn:
        report.hand_drawn[image.source] = image.hand_drawn
    return answers


def _corrections(ledger: Ledger, image: PaintedImage, digest: str | None, addressed: list[Region],
                 report: ImportReport, repainted: dict[int, tuple[str, np.ndarray | None]],
                 problems: list[str]) -> list[tuple[int, np.ndarray]]:
    """The answered regions this answer paints enough, and otherwise than their stored answer: an
    edit made after the import, which replaces it (the next cycle trains with it); and those whose
    stored answer is lost, which it writes again (reported as repaired). Two answers of one import
    painting a region two ways are a problem: taking the one unlike the stored answer would take
    the other on the next import of the same file."""
    corrections = []
    for region in addressed:
        patch, share = _painted(image, region)
        # unpainted in a mask: the region of another cycle's painting; in a task, which lists its regions: erased
        if region.state != "answered" or image.declined or not share and image.region_ids is None:
            continue
        if share >= MIN_PAINTED_SHARE:
            # a copy: a view would keep the whole image's map in memory for the rest of the import
            _check_repainted(ledger, region, image.source, patch.copy(), repainted, problems)
        stored = ledger.stored_patch(region)
        if stored is None:
            if share >= MIN_PAINTED_SHARE:
                report.repaired.append(region.region_id)
                corrections.append((region.region_id, patch.copy()))
            continue
        if np.array_equal(patch, stored):
            continue
        if _painted_before(image, digest, region):
            if share:  # unpainted and older: another task's region (a copy's), not an edit
                report.outdated.append(region.region_id)
        elif share < MIN_PAINTED_SHARE:  # kept, and said: an edit this answer makes is not silently passed over
            report.edits_under_minimum[region.region_id] = share
        else:
            corrections.append((region.region_id, patch.copy()))
    return corrections


def _check_repainted(ledger: Ledger, region: Region, source: str, patch: np.ndarray | None,
                     repainted: dict[int, tuple[str, np.ndarray | None]], problems: list[str]) -> None:
    """Keeps the first answer of this import that paints answered `region` enough, `source` painting
    `patch` (None: the region's stored answer); a later one painting it otherwise is a problem."""
    if region.region_id not in repainted:
        repainted[region.region_id] = (source, patch)
        return
    first_source, first = repainted[region.region_id]
    if not np.array_equal(ledger.stored_patch(region) if patch is None else patch,
                          ledger.stored_patch(region) if first is None else first):
        problems.append(f"{source}: region {region.region_id} is painted otherwise than in {first_source}: "
                        "keep one of the two")


def _skipped_since_answered(image: PaintedImage, addressed: list[Region]) -> list[int]:
    """The answered regions of a task skipped after their answer was painted (Skip pressed on a task
    already imported): its answers stay, and are named."""
    if not image.declined:
        return []
    return [region.region_id for region in addressed if region.state == "answered"
            and region.painted_at is not None and image.painted_at is not None and image.painted_at > region.painted_at]


def _painted_before(image: PaintedImage, digest: str | None, region: Region) -> bool:
    """Whether `image` was painted no later than the stored answer of `region` (both times in one
    UTC form); unknown when either source told no time. A mask file of the same time as the one the
    answer was read from, with another content (its time kept through an edit), is the later one."""
    if image.painted_at is None or region.painted_at is None:
        return False
    if image.painted_at == region.painted_at and None not in (digest, region.source_digest):
        return digest == region.source_digest
    return image.painted_at <= region.painted_at


def _overruled_by_skip(image: PaintedImage, addressed: list[Region]) -> list[int]:
    """The skipped regions `image` paints enough, but as their skip turned down: they stay skipped."""
    return [region.region_id for region in addressed
            if region.state == "skipped" and not image.declined and _painted(image, region)[1] >= MIN_PAINTED_SHARE
            and _skip_stands(image, region)]


def _apart(source: str, beside: str) -> str:
    """`source` (a mask, or an export's task: 'FILE: task N ...') without the file `beside` names too."""
    file = beside.split(": task ")[0]
    return source.removeprefix(f"{file}: ") if source.startswith(f"{file}: task ") else source


def _skips(image: PaintedImage, addressed: list[Region]) -> list[int]:
    """The regions still asked of a task the annotator skipped."""
    return [region.region_id for region in addressed if image.declined and region.state == "asked"]


def _take(image: PaintedImage, taken_here: list[tuple[int, np.ndarray | None]], regions: dict[int, Region],
          taken: dict[int, tuple[str, np.ndarray | None]], report: ImportReport,
          problems: list[str]) -> list[tuple[int, np.ndarray]]:
    """Of one task's answers (region id, patch) and skips (region id, None), those no earlier task
    of the import took, reported; the answers are returned. A region an earlier task took alike
    counts once (a copy of the task: the same tasks imported twice into Label Studio, both
    submitted alike); taken otherwise, it is a problem."""
    answers = []
    otherwise: dict[str, list[str]] = defaultdict(list)  # earlier task -> the regions it took otherwise
    for region_id, patch in taken_here:
        if region_id in taken:
            first_source, first = taken[region_id]
            if (first is None) != (patch is None) or (patch is not None and not np.array_equal(first, patch)):
                otherwise[first_source].append(str(region_id))
            continue
        taken[region_id] = (image.source, patch)
        if patch is None:
            report.skipped.append(region_id)
            continue
        answers.append((region_id, patch))
        state = regions[region_id].state
        if state == "answered":
            if region_id not in report.repaired:
                report.corrected.append(region_id)
            continue
        report.answered.append(region_id)
        report.void_pixels += int((patch == UNPAINTED).sum())
        if state == "skipped":
            report.unskipped.append(region_id)
    two = "masks" if report.by == BY_PNG_FOLDER else "tasks in Label Studio (tasks imported twice?)"
    problems += [f"{image.source}: {named('region', ids)} answered or skipped otherwise in "
                 f"{_apart(first, image.source)}: delete one of the two {two}" for first, ids in otherwise.items()]
    return answers
