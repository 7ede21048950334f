"""Opening a run's ledger: made on the run's first start (the initial labelled images drawn, the
train images registered), and on every start checked against what the run was made with: its
config.yaml, the dataset's classes and images. What a resume may change (SAVED_ON_RESUME) is
checked and saved here too. The cycle (s4al/active/cycle.py) only calls these."""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

from s4al.active.dataset_changes import DatasetChanges, dataset_changes
from s4al.active.ledger import (
    CLASSES_META, COLOURS_META, CONFIG_DIGEST, CONFIG_DIGEST_NEXT, CYCLES_META, EVALUATED_META, FILE_DIGEST,
    MASK_READING, RESUME_CHANGES, RUN_ID, SEED_META, Ledger, utc_now,
)
from s4al.active.phases import CyclePhases
from s4al.atomic import atomic_write, sync_folder
from s4al.config import (
    SAVED_ON_RESUME, RunConfig, config_digest, file_digest, flat_config, nested, written_config_digest,
)
from s4al.data import DatasetError
from s4al.data.base import SegmentationDataset, refuse_bad_labels
from s4al.data.folder import SPEC_NAMES
from s4al.errors import S4alWarning
from s4al.model import build_model
from s4al.run_folder import RunFolder, RunFolderError
from s4al.seeding import derive_seed
from s4al.text import counted, first_of


def draw_initial(num_images: int, fraction: float, seed: int) -> list[int]:
    """The initially fully labelled images: `fraction` of the train set, uniformly at random."""
    count = min(num_images, max(1, round(fraction * num_images)))
    rng = np.random.default_rng(derive_seed(seed, "initial"))
    return sorted(int(i) for i in rng.choice(num_images, count, replace=False))


def open_ledger(folder: RunFolder, cfg: RunConfig, train_set: SegmentationDataset, val_set: SegmentationDataset,
                test_set: SegmentationDataset | None) -> tuple[Ledger, DatasetChanges]:
    """The run's ledger, made on the first start (complete before it appears under its name),
    checked against the config and the dataset on every later one; and the images and masks added
    to the dataset since, which join the run as its next cycle begins."""
    path = folder.ledger_path
    if not folder.check_ledger():
        check_weights(cfg, train_set)  # read before the run begins, so a wrong path leaves nothing to resume
        _warn_of_void_classes(cfg, train_set)
        _make_ledger(folder, cfg, train_set)
    Ledger(path, readonly=True).close()  # a damaged file is refused before anything writes to it
    ledger = Ledger(path)
    unknown = ledger.answers_of_unknown_regions()
    if unknown:
        warnings.warn(f"{path}: older than the answers in {first_of(unknown)}, of regions it does not hold (a ledger "
                      "put back from a backup?); the run goes on from the ledger, which asks such regions anew, "
                      "and leaves those files unread", S4alWarning)
    _check_config(folder, ledger)
    _check_classes(ledger, cfg, train_set)
    additions = _check_same_images(ledger, cfg, train_set)
    _note_evaluation_changes(ledger, cfg, val_set, test_set)
    _write_splits(folder, ledger)
    for key, now in ((COLOURS_META, [list(colour) for colour in train_set.classes.colors]),
                     (MASK_READING, train_set.mask_reading())):
        if ledger.get_meta(key) is None:  # a new run, or one made before the ledger kept them
            ledger.set_meta(key, now)
    if ledger.get_meta(RUN_ID) is None:  # a new run, or one made before runs had an id
        ledger.set_meta(RUN_ID, uuid.uuid4().hex)  # tells its answers from a twin's (same seed and data)
    return ledger, additions


def _make_ledger(folder: RunFolder, cfg: RunConfig, train_set: SegmentationDataset) -> None:
    ids = train_set.image_ids()
    initial = _initial(cfg, train_set)
    warn_of_turned_images(train_set, initial)
    # decoded before the ledger holds them: an image it holds may not leave the run
    refuse_bad_labels(train_set.image_problems(range(len(ids))), files="images")
    initial_ids = [ids[i] for i in initial]
    path = folder.ledger_path
    building = path.with_name(f".{path.name}.new")
    for left in (building, *(building.with_name(f"{building.name}-{log}") for log in ("journal", "wal", "shm"))):
        left.unlink(missing_ok=True)  # an earlier try's: a journal left beside a new file would be read into it
    with Ledger(building) as ledger:
        records = [(image_id, *train_set.image_size(i)) for i, image_id in enumerate(ids)]
        ledger.register_images(records, initial=set(initial_ids))
        ledger.set_meta(CLASSES_META, list(train_set.classes.names))
        ledger.set_meta(SEED_META, cfg.seed)
        ledger.set_meta(CONFIG_DIGEST, config_digest(folder.config_path))
    os.replace(building, path)
    sync_folder(folder.path)


VOID_NAMES = ("void", "ignore", "ignored", "unlabelled", "unlabeled", "unknown", "dontcare", "don't care")


def _warn_of_void_classes(cfg: RunConfig, train_set: SegmentationDataset) -> None:
    """A class named as "no label" usually is: as a class, it is trained, asked and in the mIoU."""
    void = [name for name in train_set.classes.names if name.strip().lower() in VOID_NAMES]
    if void:
        warnings.warn(f"{_class_list(cfg)}: class '{void[0]}' is trained as a class (its regions asked, its IoU in the "
                      "mIoU); if it means no label, it is no class: give its colour as ignore_color (colour "
                      "masks), or its value as ignore_value (class-id masks: the classes after it then move down an "
                      "id, and the masks must say so)", S4alWarning)


def warn_of_turned_images(train_set: SegmentationDataset, labelled: list[int]) -> None:
    """Says which of the `labelled` images a mask of the stored pixels would fit misaligned."""
    turned = train_set.turned_keeping_size(labelled)
    if turned:
        name, orientation = next(iter(turned.items()))
        warnings.warn(f"{counted(len(turned), 'labelled image')} with an EXIF orientation that turns or mirrors "
                      f"the picture without changing its size (e.g. {name}: orientation {orientation}): their masks "
                      "must be painted on the picture as viewers show it; one painted on the stored pixels would "
                      "be misaligned, which no size check can see", S4alWarning)


def _initial(cfg: RunConfig, train_set: SegmentationDataset) -> list[int]:
    """The initially fully labelled images: drawn at random (every train image needs a label),
    or exactly the images with a label file (the others are the pool)."""
    a, ids = cfg.active, train_set.image_ids()
    has_label = [train_set.has_label(i) for i in range(len(ids))]
    unlabelled = [image_id for image_id, known in zip(ids, has_label) if not known]
    where = f"train split '{cfg.dataset.train_split}'"
    if a.initial == "random":
        if unlabelled:
            raise DatasetError(f"{where}: {counted(len(unlabelled), 'image')} without a label "
                               f"(e.g. '{unlabelled[0]}'); "
                               "set active.initial: labelled to make such images the pool")
        return draw_initial(len(ids), a.initial_fraction, cfg.seed)
    if len(unlabelled) == len(ids):
        raise DatasetError(f"{where}: active.initial 'labelled' needs some images with a label, none has one")
    if not unlabelled:
        raise DatasetError(f"{where}: active.initial 'labelled' needs some images without a label "
                           "to ask about, every image has one")
    return [i for i, known in enumerate(has_label) if known]


def check_weights(cfg: RunConfig, train_set: SegmentationDataset) -> None:
    build_model(cfg.model, train_set.classes.num_classes)


def config_changed(folder: RunFolder, ledger: Ledger) -> bool:
    """Whether config.yaml says otherwise than when the run was made, but for the keys SAVED_ON_RESUME
    (read from the digest the ledger keeps; an older ledger's is of the file's bytes)."""
    made_with = ledger.get_meta(CONFIG_DIGEST)
    if made_with is not None:
        return config_digest(folder.config_path) not in (made_with, ledger.get_meta(CONFIG_DIGEST_NEXT))
    made_with_file = ledger.get_meta(FILE_DIGEST)
    return made_with_file is not None and made_with_file != file_digest(folder.config_path)


def changed_config_note(folder: RunFolder) -> str | None:
    """For the commands that show a run's settings without resuming it: a note where config.yaml was
    edited since the run was made, else None."""
    if not folder.ledger_path.exists():
        return None
    with Ledger(folder.ledger_path, readonly=True) as ledger:
        changed = config_changed(folder, ledger)
    return (f"{folder.config_path} was edited since the run was made (it no longer matches the digest in "
            f"{folder.ledger_path}): the settings shown are the file's, not those the run was made with (each "
            "checkpoint holds the config it trained with), and `s4al run --resume` refuses it until the file the run "
            "was made with is restored") if changed else None


def _check_config(folder: RunFolder, ledger: Ledger) -> None:
    """config.yaml must say what it said when the run was made, but for the keys SAVED_ON_RESUME."""
    path = folder.config_path
    changed = config_changed(folder, ledger)
    if not changed and (ledger.get_meta(CONFIG_DIGEST) is None or ledger.get_meta(CONFIG_DIGEST_NEXT) is not None):
        _settle_config_digest(folder, ledger)  # an older ledger's, or one a stopped resume was replacing: today's
    if changed:
        raise RunFolderError(f"{path}: changed since the run was made (it no longer matches the digest in "
                             f"{folder.ledger_path}); restore the file the run was made with (only "
                             f"{', '.join(SAVED_ON_RESUME)} may change, with --set on resume)")


def _settle_config_digest(folder: RunFolder, ledger: Ledger) -> None:
    """The digest of config.yaml as it is now, and no other."""
    ledger.set_meta(CONFIG_DIGEST, config_digest(folder.config_path))
    ledger.set_meta(CONFIG_DIGEST_NEXT, None)


def _check_classes(ledger: Ledger, cfg: RunConfig, train_set: SegmentationDataset) -> None:
    """The dataset must name the classes the run was made with, in the same order, and read masks
    as it did (the same class colours, void value and colour): every stored answer, mask and
    checkpoint means a class by its number."""
    made_with, now = ledger.get_meta(CLASSES_META), list(train_set.classes.names)
    if made_with is not None and made_with != now:
        raise DatasetError(f"{_class_list(cfg)}: the run was made with the classes {', '.join(made_with)}; the dataset "
                           f"now has {', '.join(now)}: the run's answers and model give each class by its number, so "
                           "they would change meaning. Restore the classes the run was made with (the same names in "
                           "the same order), or start a new run")
    changes = _reading_changes(ledger, train_set)
    if changes:
        raise DatasetError(f"{_class_list(cfg)}: {'; '.join(changes)} since the run was made: the same masks would "
                           "give other labels than those the run has trained with. Restore it, or start a new run")


def _reading_changes(ledger: Ledger, train_set: SegmentationDataset) -> list[str]:
    """What the dataset reads masks with otherwise than the run was made with: class colours, then
    the keys of its mask_reading()."""
    changes = []
    colours = ledger.get_meta(COLOURS_META)
    if colours is not None:
        changes += [f"class '{name}' has the colour {list(now)} (was {was})"
                    for name, was, now in zip(train_set.classes.names, colours, train_set.classes.colors)
                    if was != list(now)]
    was_read = ledger.get_meta(MASK_READING) or {}  # a key the run was made without is not compared
    changes += [f"{key} is {json.dumps(now)} (was {json.dumps(was_read[key])})"
                for key, now in train_set.mask_reading().items() if key in was_read and was_read[key] != now]
    return changes


def _class_list(cfg: RunConfig) -> Path | str:
    """Where the dataset's classes are given: a folder dataset's class list, or the dataset's name."""
    d = cfg.dataset
    if d.name == "folder":
        return next((Path(d.root) / n for n in SPEC_NAMES if (Path(d.root) / n).is_file()), Path(d.root))
    return f"dataset {d.name}"


def _check_same_images(ledger: Ledger, cfg: RunConfig, train_set: SegmentationDataset) -> DatasetChanges:
    """The dataset must still hold the images the run was made with, at the same sizes, and the
    labels of those labelled whole; what was added is returned, to join as the next cycle begins."""
    changes = dataset_changes(ledger.images(), train_set, cfg)
    if changes.refusals:
        raise DatasetError(changes.refusals[0])
    return changes


def _note_evaluation_changes(ledger: Ledger, cfg: RunConfig, val_set: SegmentationDataset,
                             test_set: SegmentationDataset | None) -> None:
    """Says where the val or test split holds other images than when the run last opened: the
    cycles evaluated from now on are scored on another set than those before."""
    now = {split: dataset.image_ids() for split, dataset in (("val", val_set), ("test", test_set)) if dataset is not None}
    before = ledger.get_meta(EVALUATED_META) or {}
    for split, ids in now.items():
        earlier = before.get(split)
        if earlier is not None and set(earlier) != set(ids):  # the order scores nothing
            added, removed = sorted(set(ids) - set(earlier)), sorted(set(earlier) - set(ids))
            changes = "; ".join(f"{what}: {first_of(images)}" for what, images in
                                (("added", added), ("removed", removed)) if images)
            warnings.warn(f"{cfg.dataset.root or cfg.dataset.name}: the {split} split holds "
                          f"{counted(len(ids), 'image')} now, {len(earlier)} when this run was last opened "
                          f"({changes}): cycles evaluated from now on are scored on another set than the earlier "
                          "ones", S4alWarning)
    ledger.set_meta(EVALUATED_META, now)


def _write_splits(folder: RunFolder, ledger: Ledger) -> None:
    """splits/: the initial labelled images and the pool, as text, for audits and reuse."""
    if folder.splits_dir.is_dir():
        return
    initial = [r.image_id for r in ledger.images() if r.initial]
    pool = sorted(r.image_id for r in ledger.images() if not r.initial)
    building = folder.path / ".splits.new"
    shutil.rmtree(building, ignore_errors=True)  # an earlier try's, killed
    building.mkdir()
    for name, ids in (("initial_labelled.txt", initial), ("pool.txt", pool)):
        with atomic_write(building / name, "w") as file:  # durable before the folder takes its name
            file.write("".join(f"{i}\n" for i in ids))
    os.replace(building, folder.splits_dir)
    sync_folder(folder.path)


def save_resume_changes(folder: RunFolder, ledger: Ledger, phases: CyclePhases, cfg: RunConfig,
                        train_set: SegmentationDataset) -> None:
    """--set on resume of the keys SAVED_ON_RESUME (where the data and weights are, how many
    cycles), checked, then saved in config.yaml; the data was checked as the run opened."""
    saved, given = flat_config(folder.config()), flat_config(cfg)
    changed = {key: given[key] for key in SAVED_ON_RESUME if given[key] != saved[key]}
    was = {key: saved[key] for key in changed}
    had_cycles = ledger.get_meta(CYCLES_META, saved["active.cycles"])  # config.yaml may be edited by hand
    if given["active.cycles"] != had_cycles:
        _check_cycles(folder, phases, had_cycles, given["active.cycles"])
        changed["active.cycles"], was["active.cycles"] = given["active.cycles"], had_cycles
    if "model.weights" in changed:
        check_weights(cfg, train_set)
    if changed:
        replacement = folder.config(nested(changed))  # as this s4al writes it: a newer config_version
        # the file's new digest first: a kill before the file is replaced, or after, leaves a digest it matches
        ledger.set_meta(CONFIG_DIGEST_NEXT, written_config_digest(replacement))
        folder.save_config(replacement)
        _settle_config_digest(folder, ledger)  # the file was found unchanged above
        record = {"at": utc_now(), **{key: {"was": was[key], "now": value} for key, value in changed.items()}}
        ledger.set_meta(RESUME_CHANGES, [*ledger.get_meta(RESUME_CHANGES, []), record])
    ledger.set_meta(CYCLES_META, given["active.cycles"])


def _check_cycles(folder: RunFolder, phases: CyclePhases, had: int, wanted: int) -> None:
    """Fewer or more cycles, if the cycles begun keep their role: a cycle that asked for labels
    needs one after it; a checkpointed one keeps its schedule."""
    last = phases.last_cycle()
    if last is None:
        return
    phase = phases.phase(last)
    buys = phase in ("acquire", "answer") or (phase == "done" and last < had)
    least = last + 1 if buys else last
    if wanted < least:
        raise RunFolderError(f"{folder.path}: active.cycles={wanted} refused: cycle {last} "
                             f"{'buys labels' if buys else 'has begun'}, so the run needs at least {least}")
    if phase == "train" and folder.checkpoint_path(last).exists() and last in (had, wanted):
        role = "the last cycle (trained longer)" if last == had else "a cycle before the last"
        raise RunFolderError(f"{folder.path}: cycle {last} is training as {role}; resume it to its end, "
                             "then change active.cycles")
