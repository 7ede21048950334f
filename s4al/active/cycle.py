"""The active-learning cycle: train -> evaluate -> score the pool -> ask -> answer -> next cycle.

Cycles 0..C train; cycles 0..C-1 then buy labels (the paper's C = 2 on CamVid: 10% + 2 x 2.08%).
`s4al run --resume RUN --set active.cycles=N` changes C: a finished run's last cycle then buys labels
too (keeping the longer training it had as the final one), and the run goes on to cycle N.
The cycle phases (s4al/active/phases.py) record each phase boundary, and training checkpoints its
own progress, so `s4al run --resume` continues a killed run and reaches the same ledger as an
uninterrupted one."""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from s4al.acquisition.pool import (
    Query, choose_images, choose_regions, images_per_cycle, score_cells, scoring_workers, warn_capped,
)
from s4al.active.dataset_changes import DatasetChanges, dataset_changes
from s4al.active.label_state import LabelState
from s4al.active.ledger import (
    CLASSES_META, COLOURS_META, CONFIG_DIGEST, CYCLES_META, EVALUATED_META, FILE_DIGEST, JOINED, RESUME_CHANGES,
    RUN_ID, SEED_META, Ledger, utc_now,
)
from s4al.active.ledger_copy import copy_of
from s4al.active.oracle import BY_DATASET_MASK, Annotator, GroundTruthOracle
from s4al.active.phases import CyclePhases
from s4al.active.summaries import write_summary
from s4al import distributed, rank_checks
from s4al.config import (
    SAVED_ON_RESUME, RunConfig, config_differences, config_digest, file_digest, flat_config, nested,
)
from s4al.data import DatasetError, build_dataset
from s4al.data.base import check_labels
from s4al.data.folder import SPEC_NAMES
from s4al.errors import S4alWarning
from s4al.text import counted, first_of, shell
from s4al.evaluate import evaluate
from s4al.model import build_model
from s4al.run_folder import RunFolder, RunFolderError
from s4al.train.checkpoint import load_checkpoint, load_trained_model
from s4al.seeding import derive_seed
from s4al.distributed import setup_device
from s4al.train.trainer import Trainer, TrainData


NO_ADDITIONS = DatasetChanges([], [], [], [])


def draw_initial(num_images: int, fraction: float, seed: int) -> list[int]:
    """The initially fully labelled images: `fraction` of the train set, uniformly at random."""
    count = min(num_images, max(1, round(fraction * num_images)))
    rng = np.random.default_rng(derive_seed(seed, "initial"))
    return sorted(int(i) for i in rng.choice(num_images, count, replace=False))


class ActiveLearningRun(AbstractContextManager):
    """A run of the cycle in its run folder (s4al/run_folder.py). `cfg` makes a new run, or must
    equal the saved one; without it the run folder's config is resumed, with `overrides` limited to
    RESUME_KEYS (s4al/run_folder.py). Used as a context manager, it closes the ledger at the end, which leaves the
    file whole on its own (s4al/active/ledger.py)."""

    def __init__(
        self,
        run_dir: Path,
        cfg: RunConfig | None = None,
        annotator: Annotator | None = None,
        progress: Callable[[dict], None] | None = None,
        overrides: dict | None = None,
    ):
        self.progress = progress
        rank_checks.given_the_same(cfg, overrides)
        with distributed.main_first():  # rank 0 writes the config (and downloads data); the others read it
            self.folder = self._folder(Path(run_dir), cfg)
            self.run_dir = self.folder.path
            self.cfg = self.folder.config(overrides)
            if cfg is not None:  # a rank other than 0 keeps its node's own paths and device
                if config_differences(cfg, self.cfg, () if distributed.is_main() else rank_checks.EACH_NODE_ITS_OWN):
                    raise RunFolderError(f"{self.folder.config_path}: this run folder was made with another config; "
                                         "use --resume or a new --out")
                self.cfg = cfg
            self.device = setup_device(self.cfg.train.device)
            try:
                d = self.cfg.dataset
                self.train_set = build_dataset(d, d.train_split, self.cfg.seed)
                self.val_set = build_dataset(d, d.val_split, self.cfg.seed)
                self.test_set = build_dataset(d, d.test_split, self.cfg.seed) if d.test_split else None
            except DatasetError as err:
                if cfg is not None or "root" in (overrides or {}).get("dataset", {}):  # a new run, or a new root given
                    raise
                raise DatasetError(f"{err}; if the dataset moved: s4al run --resume {shell(self.run_dir)} "
                                   "--set dataset.root=ITS_NEW_FOLDER") from None
            self.ids = self.train_set.image_ids()
            self.index_of = {image_id: i for i, image_id in enumerate(self.ids)}
            self.additions = NO_ADDITIONS  # images and masks added to the dataset, not yet in the run (rank 0's)
            self.labels_read = False  # by this process, before it trains (_check_labels)
            self.capped_said: set[int] = set()  # cycles whose capped region settings this process said
        rank_checks.read_the_same_images({f"split '{name}'": split.image_ids() for name, split in
                                          (("train", self.train_set), ("val", self.val_set), ("test", self.test_set))
                                          if split is not None})
        if distributed.is_main():  # the other ranks take a copy of what it reads and writes
            self.ledger = self._open_ledger()
            self.phases = CyclePhases(self.ledger)
            self._save_resume_changes()
        self._copy_to_ranks()
        if annotator is None and self.cfg.active.annotator == "oracle":
            annotator = GroundTruthOracle(self._dataset_label)
        self.annotator = annotator

    def _dataset_label(self, image_id: str):
        """The (H, W) label the dataset holds for a train image."""
        return self.train_set.load_label(self.index_of[image_id])

    def close(self) -> None:
        self.phases.close()
        self.ledger.close()  # the ledger's last connection

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- set-up ---------------------------------------------------------------------------
    @staticmethod
    def _folder(path: Path, cfg: RunConfig | None) -> RunFolder:
        """Rank 0 holds the run folder's lock; the other ranks of its job only read."""
        main = distributed.is_main()
        if cfg is not None and main and not RunFolder(path).begun():
            return RunFolder.create(path, cfg)
        folder = RunFolder.open(path, lock=main)
        if main:
            folder.remove_stray_temp_files()
        return folder

    def _open_ledger(self) -> Ledger:
        """The run's ledger, made on the first start (complete before it appears under its name),
        checked against the config and the dataset on every later one."""
        path = self.folder.ledger_path
        if not self.folder.check_ledger():
            self._check_weights()  # read before the run begins, so a wrong path leaves nothing to resume
            self._make_ledger()
        Ledger(path, readonly=True).close()  # a damaged file is refused before anything writes to it
        ledger = Ledger(path)
        self._check_config(ledger)
        self._check_classes(ledger)
        self._check_same_images(ledger)
        self._note_evaluation_changes(ledger)
        self._write_splits(ledger)
        if ledger.get_meta(COLOURS_META) is None:  # a new run, or one made before the ledger kept them
            ledger.set_meta(COLOURS_META, [list(colour) for colour in self.train_set.classes.colors])
        if ledger.get_meta(RUN_ID) is None:  # a new run, or one made before runs had an id
            ledger.set_meta(RUN_ID, uuid.uuid4().hex)  # tells its answers from a twin's (same seed and data)
        return ledger

    def _make_ledger(self) -> None:
        initial_ids = [self.ids[i] for i in self._initial()]
        path = self.folder.ledger_path
        building = path.with_name(f".{path.name}.new")
        building.unlink(missing_ok=True)
        with Ledger(building) as ledger:
            records = [(image_id, *self.train_set.image_size(i)) for i, image_id in enumerate(self.ids)]
            ledger.register_images(records, initial=set(initial_ids))
            ledger.set_meta(CLASSES_META, list(self.train_set.classes.names))
            ledger.set_meta(SEED_META, self.cfg.seed)
            ledger.set_meta(CONFIG_DIGEST, config_digest(self.folder.config_path))
        os.replace(building, path)

    def _note_evaluation_changes(self, ledger: Ledger) -> None:
        """Says where the val or test split holds other images than when the run last opened: the
        cycles evaluated from now on are scored on another set than those before."""
        now = {split: dataset.image_ids()
               for split, dataset in (("val", self.val_set), ("test", self.test_set)) if dataset is not None}
        before = ledger.get_meta(EVALUATED_META) or {}
        for split, ids in now.items():
            earlier = before.get(split)
            if earlier is not None and set(earlier) != set(ids):  # the order scores nothing
                added, removed = sorted(set(ids) - set(earlier)), sorted(set(earlier) - set(ids))
                changes = "; ".join(f"{what}: {first_of(images)}" for what, images in
                                    (("added", added), ("removed", removed)) if images)
                warnings.warn(f"{self.cfg.dataset.root or self.cfg.dataset.name}: the {split} split holds "
                              f"{counted(len(ids), 'image')} now, {len(earlier)} when this run was last opened "
                              f"({changes}): cycles evaluated from now on are scored on another set than the earlier "
                              "ones", S4alWarning)
        ledger.set_meta(EVALUATED_META, now)

    def _check_config(self, ledger: Ledger) -> None:
        """config.yaml must say what it said when the run was made, but for the keys SAVED_ON_RESUME."""
        path = self.folder.config_path
        made_with = ledger.get_meta(CONFIG_DIGEST)
        if made_with is None:  # an older ledger holds the digest of the file's bytes
            made_with_file = ledger.get_meta(FILE_DIGEST)
            changed = made_with_file is not None and made_with_file != file_digest(path)
            if not changed:
                ledger.set_meta(CONFIG_DIGEST, config_digest(path))
        else:
            changed = made_with != config_digest(path)
        if changed:
            raise RunFolderError(f"{path}: changed since the run was made (it no longer matches the digest in "
                                 f"{self.folder.ledger_path}); restore the file the run was made with (only "
                                 f"{', '.join(SAVED_ON_RESUME)} may change, with --set on resume)")

    def _save_resume_changes(self) -> None:
        """--set on resume of the keys SAVED_ON_RESUME (where the data and weights are, how many
        cycles), checked, then saved in config.yaml; the data was checked as the run opened."""
        saved, given = flat_config(self.folder.config()), flat_config(self.cfg)
        changed = {key: given[key] for key in SAVED_ON_RESUME if given[key] != saved[key]}
        was = {key: saved[key] for key in changed}
        had_cycles = self.ledger.get_meta(CYCLES_META, saved["active.cycles"])  # config.yaml may be edited by hand
        if given["active.cycles"] != had_cycles:
            self._check_cycles(had_cycles, given["active.cycles"])
            changed["active.cycles"], was["active.cycles"] = given["active.cycles"], had_cycles
        if "model.weights" in changed:
            self._check_weights()
        if changed:
            self.folder.save_config(self.folder.config(nested(changed)))
            record = {"at": utc_now(), **{key: {"was": was[key], "now": value} for key, value in changed.items()}}
            self.ledger.set_meta(RESUME_CHANGES, [*self.ledger.get_meta(RESUME_CHANGES, []), record])
        self.ledger.set_meta(CYCLES_META, given["active.cycles"])

    def _check_weights(self) -> None:
        build_model(self.cfg.model, self.train_set.classes.num_classes)

    def _check_cycles(self, had: int, wanted: int) -> None:
        """Fewer or more cycles, if the cycles begun keep their role: a cycle that asked for labels
        needs one after it; a checkpointed one keeps its schedule."""
        last = self.phases.last_cycle()
        if last is None:
            return
        phase = self.phases.phase(last)
        buys = phase in ("acquire", "answer") or (phase == "done" and last < had)
        least = last + 1 if buys else last
        if wanted < least:
            raise RunFolderError(f"{self.run_dir}: active.cycles={wanted} refused: cycle {last} "
                                 f"{'buys labels' if buys else 'has begun'}, so the run needs at least {least}")
        if phase == "train" and self.folder.checkpoint_path(last).exists() and last in (had, wanted):
            role = "the last cycle (trained longer)" if last == had else "a cycle before the last"
            raise RunFolderError(f"{self.run_dir}: cycle {last} is training as {role}; resume it to its end, "
                                 "then change active.cycles")

    def _initial(self) -> list[int]:
        """The initially fully labelled images: drawn at random (every train image needs a label),
        or exactly the images with a label file (the others are the pool)."""
        a = self.cfg.active
        has_label = [self.train_set.has_label(i) for i in range(len(self.ids))]
        unlabelled = [image_id for image_id, known in zip(self.ids, has_label) if not known]
        where = f"train split '{self.cfg.dataset.train_split}'"
        if a.initial == "random":
            if unlabelled:
                raise DatasetError(f"{where}: {counted(len(unlabelled), 'image')} without a label "
                                   f"(e.g. '{unlabelled[0]}'); "
                                   "set active.initial: labelled to make such images the pool")
            return draw_initial(len(self.ids), a.initial_fraction, self.cfg.seed)
        if len(unlabelled) == len(self.ids):
            raise DatasetError(f"{where}: active.initial 'labelled' needs some images with a label, none has one")
        if not unlabelled:
            raise DatasetError(f"{where}: active.initial 'labelled' needs some images without a label "
                               "to ask about, every image has one")
        return [i for i, known in enumerate(has_label) if known]

    def _check_classes(self, ledger: Ledger) -> None:
        """The dataset must name the classes the run was made with, in the same order: every stored
        answer, mask and checkpoint means a class by its number."""
        made_with, now = ledger.get_meta(CLASSES_META), list(self.train_set.classes.names)
        if made_with is None or made_with == now:
            return
        d = self.cfg.dataset
        source = f"dataset {d.name}"
        if d.name == "folder":
            source = next((Path(d.root) / n for n in SPEC_NAMES if (Path(d.root) / n).is_file()), Path(d.root))
        raise DatasetError(f"{source}: the run was made with the classes {', '.join(made_with)}; the dataset now has "
                           f"{', '.join(now)}: the run's answers and model give each class by its number, so they "
                           "would change meaning. Restore the classes the run was made with (the same names in the "
                           "same order), or start a new run")

    def _check_same_images(self, ledger: Ledger) -> None:
        """The dataset must still hold the images the run was made with, at the same sizes, and the
        labels of those labelled whole; what was added joins as the next cycle begins."""
        changes = dataset_changes(ledger.images(), self.train_set, self.cfg)
        if changes.refusals:
            raise DatasetError(changes.refusals[0])
        self.additions = changes

    def _write_splits(self, ledger: Ledger) -> None:
        """splits/: the initial labelled images and the pool, as text, for audits and reuse."""
        if self.folder.splits_dir.is_dir():
            return
        initial = [r.image_id for r in ledger.images() if r.initial]
        pool = sorted(r.image_id for r in ledger.images() if not r.initial)
        building = self.folder.path / ".splits.new"
        building.mkdir(exist_ok=True)
        (building / "initial_labelled.txt").write_text("".join(f"{i}\n" for i in initial))
        (building / "pool.txt").write_text("".join(f"{i}\n" for i in pool))
        os.replace(building, self.folder.splits_dir)

    def _copy_to_ranks(self) -> None:
        """The other ranks read rank 0's copy of the ledger and phases, never the file
        (s4al/active/ledger_copy.py)."""
        if distributed.world_size() > 1:
            copies = distributed.from_main(copy_of(self.ledger, self.phases) if distributed.is_main() else None)
            if not distributed.is_main():
                self.ledger, self.phases = copies

    def _on_main(self, write: Callable, *args) -> None:
        """Rank 0 writes (ledger, summaries); then every rank has the copy of what it wrote."""
        if distributed.is_main():
            write(*args)
        self._copy_to_ranks()

    def _set_phase(self, cycle: int, phase: str, metrics: dict | None = None) -> None:
        self._on_main(lambda: self.phases.set_phase(cycle, phase, metrics))

    # ---- the loop -------------------------------------------------------------------------
    @property
    def final_cycle(self) -> int:
        return self.cfg.active.cycles

    def run(self) -> list[dict]:
        """Runs or resumes every cycle; returns the per-cycle summaries. Stops early (returning
        what is done) when an external annotator still has to answer."""
        self._reopen_former_final()
        if distributed.is_main():
            self._restore_summaries()
        for cycle in range(self.final_cycle + 1):
            if self.phases.phase(cycle) in (None, "train"):
                self._train(cycle)
            if self.phases.phase(cycle) == "acquire":
                self.acquire(cycle)
            if self.phases.phase(cycle) == "answer" and not self._answer(cycle):
                break
        return self.summaries()

    def _reopen_former_final(self) -> None:
        """A run given more cycles: its last cycle, done as the final one, buys labels now."""
        last = self.phases.last_cycle()
        if (last is not None and last < self.final_cycle and self.phases.phase(last) == "done"
                and not self.ledger.regions(last) and not self._acquired_whole(last)):
            self._on_main(self._reopen, last)

    def _restore_summaries(self) -> None:
        """A finished cycle's summary gone from cycles/ (deleted by hand) is written again: the ledger
        holds everything it says."""
        for cycle in range(self.final_cycle + 1):
            if self.phases.phase(cycle) == "done" and not self.folder.cycle_summary_path(cycle).exists():
                self._write_summary(cycle)

    def _reopen(self, cycle: int) -> None:
        self.folder.cycle_summary_path(cycle).unlink(missing_ok=True)  # written again once it is answered
        self.phases.reopen(cycle)

    def summaries(self) -> list[dict]:
        return self.folder.summaries()

    # ---- phases ---------------------------------------------------------------------------
    def label_state(self) -> LabelState:
        return LabelState.read(self.ledger, self.index_of)

    def train_data(self, state: LabelState) -> TrainData:
        return TrainData(self.train_set, labelled=state.whole, pool=state.pool, annotations=state.answers)

    def initial_student(self, cycle: int) -> dict | None:
        """The student state a cycle starts from: the previous cycle's, or None (ImageNet weights)."""
        if cycle == 0 or self.cfg.active.reinit_each_cycle:
            return None
        return load_checkpoint(self.folder.trained_checkpoint(cycle - 1))["student"]

    def _check_labels(self, state: LabelState) -> None:
        """Every validation and test mask, and those of the images labelled whole, read once before
        this process trains: bad ones are refused now, all together, not one by one at the first
        batch or evaluation that meets them."""
        if not self.labels_read:
            check_labels((self.train_set, state.whole), (self.val_set, None), (self.test_set, None))
            self.labels_read = True

    def _train(self, cycle: int) -> None:
        self._on_main(self._join_additions, cycle, "training")
        state = self.label_state()
        self._check_labels(state)
        self._set_phase(cycle, "train")
        if cycle < self.final_cycle:
            self._say_capped(cycle, state)  # before the hours of training
        trainer = Trainer(
            self.cfg, self.train_data(state), self.val_set, self.run_dir, cycle, self.cfg.cycle_epochs(cycle),
            self.initial_student(cycle), self.progress,
        )
        result = trainer.fit()
        metrics = {
            "labelled_fraction": state.labelled_fraction,
            "labelled_pixels": state.labelled_pixels,
            "val": result.final_scores,
            "epochs": self.cfg.cycle_epochs(cycle),  # a run given more cycles trained its former last one longer
            "processes": distributed.world_size(),  # train.batch_size is per process
            "train_seconds": result.seconds,  # a resumed cycle's too
        }
        if self.test_set is not None:
            scores = evaluate(result.teacher, self.test_set, self.cfg.train.eval_batch_size, self.device,
                              fast=self.cfg.train.fast)
            metrics["test"] = scores.as_dict(self.test_set.classes.names)
        if cycle < self.final_cycle:
            self._set_phase(cycle, "acquire", metrics)
            return
        # The summary is written before 'done', so a kill in between re-trains (a no-op from the
        # final checkpoint) and writes it again, instead of leaving a 'done' run without it.
        self._set_phase(cycle, "train", metrics)
        self._on_main(self._write_summary, cycle)
        self._set_phase(cycle, "done")

    def acquire(self, cycle: int) -> None:
        """Score the pool with the cycle's checkpoint and ask (or buy whole images), once."""
        if not self.ledger.regions(cycle) and not self._acquired_whole(cycle):
            self._on_main(self._join_additions, cycle, "asking")
            started = time.perf_counter()
            queries = self._queries(cycle)  # every rank scores its share; all get the same queries
            self._on_main(self._record_queries, cycle, queries, time.perf_counter() - started)
        self._set_phase(cycle, "answer")

    def _answer_by_masks(self, cycle: int) -> None:
        """The regions asked of pool images given a mask since (active.initial 'labelled') are
        answered by it: nobody need paint or skip them, and the image joins as labelled whole when
        the next cycle begins."""
        masked = set(self.additions.masked)
        regions = [region for region in self.ledger.asked(cycle) if region.image_id in masked]
        if regions:
            GroundTruthOracle(self._dataset_label, name=BY_DATASET_MASK).answer(self.ledger, regions)

    def _join_additions(self, cycle: int, before: str) -> None:
        """Images and masks added to the dataset since the run was made join it as a cycle begins
        training or asking (s4al/active/dataset_changes.py says how). Never once a cycle has
        checkpointed part of its training: its labels are fixed. Rank 0 alone looks, so the ranks
        cannot go different ways on what they see of the checkpoint."""
        added = self.additions
        if not (added.added or added.masked) or (before == "training" and self.folder.checkpoint_path(cycle).exists()):
            return
        self.ledger.register_images([(i, *self.train_set.image_size(self.index_of[i])) for i in added.added],
                                    initial=added.added_labelled)
        self.ledger.label_whole(added.masked)
        joined = {"at": utc_now(), "before": f"cycle {cycle} {before}", "labelled": added.added_labelled,
                  "pool": added.added_pool, "masked": added.masked}
        self.ledger.set_meta(JOINED, [*self.ledger.get_meta(JOINED, []), joined])
        self.additions = NO_ADDITIONS
        if self.progress is not None:
            self.progress({"event": "joined", "before": joined["before"], "text": added.text()})

    def _record_queries(self, cycle: int, queries: list[Query], seconds: float) -> None:
        a = self.cfg.active
        if a.level == "region":
            self.ledger.ask(cycle, [(self.ids[q.index], q.box, a.metric, q.score) for q in queries])
        else:
            self.ledger.acquire_images(cycle, [self.ids[q.index] for q in queries], a.metric, [q.score for q in queries])
        self.phases.set_phase(cycle, "acquire", {"acquire_seconds": seconds})

    def _acquired_whole(self, cycle: int) -> bool:
        return any(r.acquired_cycle == cycle for r in self.ledger.images())

    def _queries(self, cycle: int) -> list[Query]:
        a = self.cfg.active
        model, _ = load_trained_model(self.folder.trained_checkpoint(cycle), "teacher", self.device)
        seed = derive_seed(self.cfg.seed, "acquire", cycle)
        state = self.label_state()
        workers = scoring_workers(self.device, self.cfg.train.num_workers)
        if a.level == "image":
            count = images_per_cycle([state.sizes[i] for i in state.initial_pool], a)
            return choose_images(model, self.train_set, state.whole, state.pool, count, a, self.device, seed, workers,
                                 fast=self.cfg.train.fast)
        cells = score_cells(model, self.train_set, state.pool, state.asked, a, self.device, seed, workers,
                            fast=self.cfg.train.fast)
        self._say_capped(cycle, state)  # where this process did not train the cycle
        return choose_regions(cells, {i: state.sizes[i] for i in state.pool}, a)

    def _say_capped(self, cycle: int, state: LabelState) -> None:
        """Says (rank 0, once a cycle) where the pool's images are too small for the region settings."""
        if self.cfg.active.level == "region" and distributed.is_main() and cycle not in self.capped_said:
            warn_capped({i: state.sizes[i] for i in state.pool}, self.cfg.active)
            self.capped_said.add(cycle)

    def _answer(self, cycle: int) -> bool:
        self._on_main(self._answer_by_masks, cycle)
        pending = self.ledger.asked(cycle)
        if pending:
            if self.annotator is None:
                return False
            self._on_main(self.annotator.answer, self.ledger, pending)
        self._on_main(self._write_summary, cycle)
        self._set_phase(cycle, "done")
        return True

    def _write_summary(self, cycle: int) -> None:
        write_summary(self.folder, self.ledger, self.phases, cycle, list(self.train_set.classes.names),
                      self._dataset_label)
