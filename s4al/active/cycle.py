"""The active-learning cycle: train -> evaluate -> score the pool -> ask -> answer -> next cycle.

Cycles 0..C train; cycles 0..C-1 then buy labels (the paper's C = 2 on CamVid: 10% + 2 x 2.08%).
`s4al run --resume RUN --set active.cycles=N` changes C: a finished run's last cycle then buys labels
too (keeping the longer training it had as the final one), and the run goes on to cycle N.
The cycle phases (s4al/active/phases.py) record each phase boundary, and training checkpoints its
own progress, so `s4al run --resume` continues a killed run and reaches the same ledger as an
uninterrupted one."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from s4al.acquisition.pool import (
    Query, choose_images, choose_regions, images_per_cycle, score_cells, scoring_workers, warn_capped,
)
from s4al.active.dataset_changes import DatasetChanges
from s4al.active.label_state import LabelState
from s4al.active.ledger import utc_now
from s4al.active.ledger_copy import copy_of
from s4al.active.opening import open_ledger, save_resume_changes, warn_of_turned_images
from s4al.active.oracle import BY_DATASET_MASK, Annotator, GroundTruthOracle
from s4al.active.phases import CyclePhases
from s4al.active.summaries import rewrite_due_summaries, write_summary
from s4al import distributed, rank_checks
from s4al.config import RunConfig, config_differences
from s4al.data import DatasetError, build_dataset
from s4al.data.base import refuse_bad_labels
from s4al.errors import S4alWarning
from s4al.text import counted, first_of, shell
from s4al.evaluate import evaluate, unscored_split
from s4al.run_folder import RunFolder, RunFolderError
from s4al.train.checkpoint import load_checkpoint, load_trained_model, refuse_other_processes_at
from s4al.seeding import derive_seed
from s4al.distributed import setup_device
from s4al.train.trainer import Trainer
from s4al.train.data import TrainData


NO_ADDITIONS = DatasetChanges([], [], [], [])


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
            self.evaluation_labels_read = False  # by this process, before it trains (_check_labels)
            self.capped_said: set[int] = set()  # cycles whose capped region settings this process said
        rank_checks.read_the_same_images({f"split '{name}'": split.image_ids() for name, split in
                                          (("train", self.train_set), ("val", self.val_set), ("test", self.test_set))
                                          if split is not None})
        rank_checks.read_the_same_classes(self.train_set)
        if distributed.is_main():  # the other ranks take a copy of what it reads and writes
            self.ledger, self.additions = open_ledger(self.folder, self.cfg, self.train_set, self.val_set,
                                                      self.test_set)
            self.phases = CyclePhases(self.ledger)
            self._refuse_other_processes()
            save_resume_changes(self.folder, self.ledger, self.phases, self.cfg, self.train_set)
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

    def _refuse_other_processes(self) -> None:
        """Refuses, before a resume writes its changes or its start, a cycle stopped while training
        by another number of processes than this job's (s4al/train/checkpoint.py)."""
        cycle = self.phases.last_cycle() or 0
        if self.phases.phase(cycle) in (None, "train"):
            refuse_other_processes_at(self.folder.checkpoint_path(cycle), distributed.world_size())

    # ---- the loop -------------------------------------------------------------------------
    @property
    def final_cycle(self) -> int:
        return self.cfg.active.cycles

    def run(self) -> list[dict]:
        """Runs or resumes every cycle; returns the per-cycle summaries. Stops early (returning
        what is done) when an external annotator still has to answer."""
        self._on_main(self._answer_lost_again)
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

    def _answer_lost_again(self) -> None:
        """An oracle run's answers whose stored file is lost (deleted by hand) or damaged are written
        again from the dataset's labels, which they were; a person's are imported again (status says how)."""
        if not isinstance(self.annotator, GroundTruthOracle):
            return
        ours = (self.annotator.name, BY_DATASET_MASK)
        lost = [region for region in self.ledger.answered()
                if region.answered_by in ours and self.ledger.stored_patch(region) is None]
        if lost:
            self.annotator.answer(self.ledger, lost, overwrite=True)

    def _reopen_former_final(self) -> None:
        """A run given more cycles: its last cycle, done as the final one, buys labels now."""
        last = self.phases.last_cycle()
        if (last is not None and last < self.final_cycle and self.phases.phase(last) == "done"
                and not self.ledger.regions(last) and not self._acquired_whole(last)):
            self._on_main(self._reopen, last)

    def _restore_summaries(self) -> None:
        """A finished cycle's summary gone from cycles/ (deleted by hand), or due since an import changed
        its answers (stopped before it wrote it), is written again: the ledger holds everything it says."""
        rewrite_due_summaries(self.folder, self.ledger)
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
        """The masks of the images labelled whole, as a cycle begins training, and every validation
        and test mask, once per process: bad ones are refused now, all together and on every rank,
        not one by one at the first batch or evaluation that meets them on one rank."""
        lacking = [i for i in state.whole if not self.train_set.has_label(i)]
        problems = [f"{counted(len(lacking), 'image')} labelled whole in this run without a mask in "
                    f"{self.cfg.dataset.root or self.cfg.dataset.name}: {first_of([self.ids[i] for i in lacking])}; "
                    "put the masks back"] if lacking else []
        problems += self.train_set.label_problems(state.whole)
        if not self.evaluation_labels_read:
            problems += [p for split in (self.val_set, self.test_set) if split is not None
                         for p in split.label_problems()]
            problems += filter(None, [unscored_split(split, name, self.cfg.dataset) for split, name in (
                (self.val_set, self.cfg.dataset.val_split), (self.test_set, self.cfg.dataset.test_split))
                if split is not None])
            self.evaluation_labels_read = True
        refuse_bad_labels(rank_checks.agreed(problems))

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
            if not queries and distributed.is_main():
                warnings.warn(f"cycle {cycle} asked nothing: the pool has nothing left to ask (every image labelled "
                              "or every region of it asked); the cycles after it train on the same labels",
                              S4alWarning, stacklevel=2)
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
        labelled = [self.index_of[i] for i in added.added_labelled + added.masked]
        # before the ledger holds them: an image it holds may not leave the run, a label is trained
        refuse_bad_labels(self.train_set.image_problems(self.index_of[i] for i in added.added), files="images")
        refuse_bad_labels(self.train_set.label_problems(labelled))
        warn_of_turned_images(self.train_set, labelled)
        joined = {"at": utc_now(), "before": f"cycle {cycle} {before}", "labelled": added.added_labelled,
                  "pool": added.added_pool, "masked": added.masked}
        self.ledger.join_images([(i, *self.train_set.image_size(self.index_of[i])) for i in added.added],
                                added.added_labelled, added.masked, joined)
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
        rank_checks.read_the_same_checkpoint(self.folder.trained_checkpoint(cycle))
        model, _ = load_trained_model(self.folder.trained_checkpoint(cycle), "teacher", self.device)
        seed = derive_seed(self.cfg.seed, "acquire", cycle)
        state = self.label_state()
        workers = scoring_workers(self.device, self.cfg.train.num_workers)
        scored = self._scoring_progress(cycle, len(state.pool))
        if a.level == "image":
            count = images_per_cycle([state.sizes[i] for i in state.initial_pool], a)
            return choose_images(model, self.train_set, state.whole, state.pool, count, a, self.device, seed, workers,
                                 fast=self.cfg.train.fast, scored=scored)
        cells = score_cells(model, self.train_set, state.pool, state.asked, a, self.device, seed, workers,
                            fast=self.cfg.train.fast, scored=scored)
        self._say_capped(cycle, state)  # where this process did not train the cycle
        return choose_regions(cells, {i: state.sizes[i] for i in state.pool}, a)

    def _scoring_progress(self, cycle: int, pool_size: int) -> Callable[[int], None] | None:
        """Says the pool images scored so far as "score" events; in a job of several processes, this
        one's share, of a total not known here."""
        if self.progress is None:
            return None
        done = 0
        total = pool_size if distributed.world_size() == 1 else None

        def scored(images: int) -> None:
            nonlocal done
            done += images
            self.progress({"event": "score", "cycle": cycle, "images": done, "total": total})
        return scored

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
