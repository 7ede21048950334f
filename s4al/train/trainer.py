"""The one training loop: supervised when there is no pool (or SSL is off), otherwise the
paper's mean-teacher learner with Confidence Weighting and Balanced ClassMix (Eqs. 1-6).

Each step gets its batches by name (labelled, unlabelled, replay) from loader workers or, on the
fast path, from the train split cached on the device (s4al/train/batches.py).

Each of the three losses is backpropagated on its own as soon as it is computed, so only one
training graph is alive at a time (the sum's gradient is the same; peak memory is a third).

On a GPU the logged losses stay on the device and are read every READ_EVERY steps (and at every
epoch's end), so the GPU never waits for the host inside a step. A loss read as
non-finite, or non-finite parameters at an epoch's end, stops training with TrainingDiverged
before anything non-finite is written.

Ctrl-C (SIGINT) or SIGTERM (a batch scheduler's preemption or time limit) in one process lets the
step under way finish, checkpoints it and raises TrainingStopped, so a resume repeats no step; loader
workers leave both to the main process, which ends them. A second signal interrupts at once, as does
the first with several processes, which could stop at different steps."""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from s4al import distributed, rank_checks
from s4al.config import RunConfig
from s4al.data.base import SegmentationDataset
from s4al.data.classes import IGNORE_INDEX
from s4al.data.device_cache import common_size, training_on_device
from s4al.data.augment import Augment
from s4al.errors import S4alError
from s4al.text import counted, shell
from s4al.evaluate import evaluate
from s4al.model import build_model
from s4al.run_folder import RunFolder
from s4al.seeding import derive_seed, seeded_generator
from s4al.ssl.alignment import ALIGNERS, ArgmaxAlignment, ProbabilityAlignment
from s4al.ssl.classmix import balanced_classmix_batch, classmix_batch, classmix_masks, paste, split_head_tail
from s4al.ssl.losses import (
    apply_annotations, confidence_ratio, supervised_loss, unsupervised_loss,
)
from s4al.ssl.mean_teacher import MeanTeacher, pseudo_labels_from_probs
from s4al.train.checkpoint import load_checkpoint, refuse_other_processes, save_checkpoint, write_metrics_log
from s4al.train.batches import BatchSource, StepBatch
from s4al.train.data import TrainData, labelled_class_counts, warn_padded_crops, warn_unlabelled_classes
from s4al.train.graphs import StudentPasses, teacher_pass

COLD_START_SUP_WEIGHT = 1.5  # the authors' code: the supervised loss x1.5 while it trains alone
READ_EVERY = 25  # on a GPU or the fast path: steps between reads of the logged losses (at most an epoch)


class TrainingDiverged(S4alError):
    """A logged loss or the parameters went non-finite; the checkpoint on disk (if any) is the last
    finite state and was kept."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; a scheduler's preemption or time limit


class TrainingStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training: the step under way finished and was checkpointed (the
    message says which)."""

    def __init__(self, message: str, signum: signal.Signals = signal.SIGINT):
        super().__init__(message)
        self.signum = signum  # the stop's; a command ends with 128 + it, the shell's status of a command it ended


@dataclass
class TrainResult:
    student: nn.Module
    teacher: nn.Module
    history: list[dict]  # one entry per evaluation
    seconds: float  # spent training, over every process that trained the cycle

    @property
    def final_scores(self) -> dict:
        """The last evaluation's scores, without where in training it was made."""
        return {k: v for k, v in self.history[-1].items() if k not in ("cycle", "epoch", "step")}


def poly_schedule(total_steps: int, power: float) -> Callable[[int], float]:
    return lambda step: max(1.0 - step / total_steps, 0.0) ** power


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        data: TrainData,
        val_dataset: SegmentationDataset | None,
        run_dir: Path,
        cycle: int = 0,
        epochs: int | None = None,
        init_state: dict | None = None,
        progress: Callable[[dict], None] | None = None,
    ):
        self.cfg, self.data, self.val_dataset, self.cycle = cfg, data, val_dataset, cycle
        self.run_dir = Path(run_dir)
        self.device = distributed.setup_device(cfg.train.device)
        self.num_classes = data.dataset.classes.num_classes
        self.iters = cfg.train.iters_per_epoch
        self.epochs = cfg.train.epochs if epochs is None else epochs
        self.total_steps = self.epochs * self.iters
        self.ssl = cfg.ssl.enabled and bool(data.pool)
        self.streams = data.streams(self.ssl)
        self.labels = data.labels()
        self.cold_steps = cfg.ssl.cold_start_epochs * self.iters if self.ssl else 0
        self.folder = RunFolder(self.run_dir)
        self.checkpoint_path = self.folder.checkpoint_path(cycle)
        self.progress = progress if progress is not None and distributed.is_main() else (lambda info: None)
        # Each rank mixes and drops out with its own draws; rank 0's are those of a single process.
        self.rank_seed = (distributed.rank(),) if distributed.rank() else ()

        torch.manual_seed(derive_seed(cfg.seed, "init", cycle))  # the decoder's random initialisation
        self.student = build_model(cfg.model, self.num_classes).to(self.device)
        if init_state is not None:
            self.student.load_state_dict(init_state)
        self.teacher = MeanTeacher(self.student, cfg.ssl.ema_momentum)
        self.net = self._parallel(self.student)  # what the loop calls forward on
        t = cfg.train
        streams = self.streams
        if t.crop_size is None and (streams.labelled or streams.pool):
            common_size(data.dataset, [*streams.labelled, *streams.pool],
                        "with train.crop_size null each image trains at its own size, and a batch stacks one size; "
                        "set train.crop_size (the paper's CamVid crop: [360, 480]) or dataset.resize")
        self.fast = training_on_device(t.fast, self.device, data.dataset, streams.labelled, streams.pool,
                                       len(streams.pool_answers))
        self.cuda_fast = cuda_fast = self.fast and self.device.type == "cuda"
        self.sgd_flags = {"fused": True} if cuda_fast else {}  # one kernel for all parameters; else torch's default
        self.optimizer, self.scheduler = self._optimizer()
        self.head, self.tail, self.alignment = [], [], None
        if self.ssl:
            self.head, self.tail, self.alignment = self._class_balance()
        self.step = 0
        self.saved_step: int | None = None  # the step of the checkpoint on disk
        self.stop_requested: signal.Signals | None = None  # during fit(): stop after the step under way
        self.history: list[dict] = []
        self.seconds_before = 0.0  # spent training this cycle by the processes before this one (a resume)
        self.fit_started = time.perf_counter()
        self.amp = self.device.type == "cuda" and t.amp
        self.graphs = cuda_fast and t.cuda_graphs and distributed.world_size() == 1
        self.student_pass = StudentPasses(self.net, self.student, self.amp, self.graphs)
        self.teacher_pass = teacher_pass(self.teacher, self.amp, self.graphs)
        self.grads_to_none = not self.graphs  # graphs keep each parameter's .grad tensor (s4al/train/graphs.py)
        self.read_every = min(READ_EVERY, self.iters) if self.fast or self.device.type == "cuda" else 1
        aug = Augment(scale_range=t.scale_range, crop_size=t.crop_size, hflip_p=t.hflip_p,
                      color_jitter_p=t.color_jitter_p)
        self.source = BatchSource(cfg, data.dataset, streams, cycle, self.total_steps, self.cold_steps, self.device,
                                  aug, on_device=self.fast, graphs=self.graphs)
        if distributed.is_main() and t.crop_size is not None:  # image sizes: a header read each in a folder
            sizes = {data.dataset.image_size(i) for i in {*streams.labelled, *streams.pool}}
            warn_padded_crops(t.crop_size, t.scale_range, list(sizes))

    def _optimizer(self) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
        t = self.cfg.train
        optimizer = torch.optim.SGD(self.student.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                                    weight_decay=t.weight_decay, **self.sgd_flags)
        # Poly decay per iteration (the authors' code steps it per epoch; per iteration is smoother
        # and is what DeepLab's "poly" policy specifies).
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(self.total_steps, t.poly_power))

    def _class_balance(self) -> tuple[torch.Tensor, torch.Tensor, ProbabilityAlignment | ArgmaxAlignment | None]:
        """Balanced ClassMix's head and tail class ids (on the device once: read every step) and the
        distribution aligner, if any, from the labelled pixels' class counts."""
        ssl = self.cfg.ssl
        whole, regions, void = labelled_class_counts(self.data, self.num_classes)
        if distributed.is_main():
            warn_unlabelled_classes(self.data.dataset.classes.names, whole + regions, void)
        whole, regions = torch.from_numpy(whole), torch.from_numpy(regions)
        head, tail = (ids.to(self.device) for ids in split_head_tail(whole + regions, ssl.head_share))
        if ssl.distribution_alignment == "off":
            return head, tail, None
        # The class distribution: bought regions over-sample the classes the scores favour, so
        # they count only where nothing else is labelled (own data), the best estimate there is.
        distribution = whole if whole.sum() > 0 else whole + regions
        estimate_steps = self.iters if ssl.alignment_target == "labelled_x_predicted" else 0
        aligner = ALIGNERS[ssl.distribution_alignment]
        # its own momentum, not the teacher's; on the device from the start: a first SSL step that moved
        # it there would wait on the host's copy
        return head, tail, aligner(distribution.to(self.device), estimate_steps=estimate_steps)

    def replaying(self) -> bool:
        """Whether every pass (the built batches' once made) replays as a CUDA graph: a capture that
        failed left its pass eager."""
        passes = [self.student_pass, self.teacher_pass, *self.source.views.values()]
        return all(p.graphs for p in passes)

    @contextlib.contextmanager
    def cudnn_tuned(self):
        """On the CUDA fast path, for this training only: cuDNN times its kernels for each shape
        once and keeps the fastest (the crops have one size, so it times them once)."""
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = before or self.cuda_fast
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before

    def _parallel(self, student: nn.Module) -> nn.Module:
        if distributed.world_size() == 1:
            return student
        return DistributedDataParallel(student, device_ids=[self.device] if self.device.type == "cuda" else None)

    def _new_reducer(self) -> None:
        """Under DDP, a new wrapper after each checkpoint, as a resume from it starts with: DDP sums a
        wrapper's first step in buckets of its default layout and later ones in the order gradients
        came, and over three or more ranks the rounding of a sum follows its place in a bucket."""
        if self.net is not self.student:
            self.net = self._parallel(self.student)
            self.student_pass = StudentPasses(self.net, self.student, self.amp, self.graphs)

    def _synced(self, last: bool):
        """DDP reduces gradients once per step: in the last backward; earlier ones accumulate."""
        return contextlib.nullcontext() if last or self.net is self.student else self.net.no_sync()

    def batches(self) -> Iterator[StepBatch]:
        """Each remaining step's batches (s4al/train/batches.py)."""
        return self.source.batches(self.step)

    # ---- one iteration --------------------------------------------------------------------
    def forward(self, images: torch.Tensor, frozen_bn: bool = False) -> torch.Tensor:
        """The student's fp32 logits at the training precision, BatchNorm statistics frozen or not."""
        return self.student_pass(images, frozen_bn)

    def _unsupervised_backward(self, images, pseudo, confidence, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward of the unsupervised loss (Eqs. 3-5) of the student on `images`; returns the loss and eta."""
        s = self.cfg.ssl
        eta = confidence_ratio(confidence, pseudo != IGNORE_INDEX, s.confidence_threshold)
        with self._synced(last):
            loss = unsupervised_loss(  # the logits are not held: backward does not need them
                self.forward(images, s.freeze_bn_on_unlabelled), pseudo, confidence, eta, s.confidence_weighting,
                class_normalised=s.class_normalised_confidence,
            )
            self.student_pass.backward(loss)
        return loss.detach(), eta.mean()

    def _pseudo_labels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's pseudo labels and confidences of a batch's weak view: aligned (if on), the
        answers where known (confidence 1), void outside the image."""
        probs = self.teacher_pass(batch["weak"])
        if self.alignment is not None:
            self.alignment.update(probs, batch["valid"], distributed.all_mean)
            probs = self.alignment(probs)
        pseudo, confidence = pseudo_labels_from_probs(probs)
        pseudo, confidence = apply_annotations(pseudo, confidence, batch["known"], batch["known_label"])
        pseudo = pseudo.masked_fill(~batch["valid"], IGNORE_INDEX)
        return pseudo, confidence

    def train_step(
        self, step: int, labelled: dict, unlabelled: dict | None = None, replay: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """One optimiser step on a StepBatch's batches; returns the losses (and etas) on the device.
        The student learns the labelled batch; with SSL, the teacher pseudo-labels the unlabelled and
        replay batches in one pass, the student learns the unlabelled batch mixed within itself
        (ClassMix) and then, with a replay batch, the replay images' chosen classes pasted onto the
        unlabelled ones (Balanced ClassMix); the teacher follows the student (EMA)."""
        s = self.cfg.ssl
        torch.manual_seed(derive_seed(self.cfg.seed, "step", self.cycle, step, *self.rank_seed))  # dropout, resumable
        self.optimizer.zero_grad(set_to_none=self.grads_to_none)
        sup_weight = COLD_START_SUP_WEIGHT if step < self.cold_steps else 1.0
        with self._synced(last=unlabelled is None):
            loss = supervised_loss(self.forward(labelled["image"]), labelled["label"].long()) * sup_weight
            self.student_pass.backward(loss)
        logs = {"loss/sup": loss.detach()}
        if unlabelled is not None:
            teacher_views = ("weak", "valid", "known", "known_label")
            pseudo, confidence = self._pseudo_labels(  # the joined copy is freed before the student's passes
                unlabelled if replay is None else {k: torch.cat([unlabelled[k], replay[k]]) for k in teacher_views}
            )
            n = len(unlabelled["strong"])
            current = unlabelled["strong"], pseudo[:n], confidence[:n]
            generator = seeded_generator(self.cfg.seed, "mix", self.cycle, step, *self.rank_seed)
            mixed = classmix_batch(*current, generator) if s.classmix else current
            logs["loss/unsup"], logs["eta/unsup"] = self._unsupervised_backward(*mixed, last=replay is None)
            if replay is not None:
                replayed = replay["strong"], pseudo[n:], confidence[n:]
                if s.balanced_classmix:
                    mixed = balanced_classmix_batch(*current, *replayed, self.head, self.tail, s.n_head, s.n_tail,
                                                    generator)
                else:
                    mixed = paste(classmix_masks(replayed[1], generator), replayed, current)
                logs["loss/replay"], logs["eta/replay"] = self._unsupervised_backward(*mixed, last=True)
        self.optimizer.step()
        self.scheduler.step()
        self.teacher.update(self.student, step)
        # Ranks share parameters (DDP) but each saw its own batch statistics: keep one teacher.
        distributed.broadcast_buffers(self.teacher.model)
        return logs

    # ---- checkpoints, evaluation, the loop --------------------------------------------------
    def _state(self) -> dict:
        return {
            "cycle": self.cycle,
            "step": self.step,
            "total_steps": self.total_steps,
            "processes": distributed.world_size(),  # train.batch_size is per process
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "alignment": self.alignment.state_dict() if self.alignment else None,
            # a finished cycle never steps again: its momentum (a model's size) is not kept
            "optimizer": self.optimizer.state_dict() if self.step < self.total_steps else None,
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "config": self.cfg.model_dump(mode="json"),
            "seconds": self.seconds(),
            "classes": list(self.data.dataset.classes.names),
            "colours": [list(colour) for colour in self.data.dataset.classes.colors],  # predict's, wherever it runs
            "labels": self.labels,
        }

    def _restore(self) -> None:
        rank_checks.read_the_same_checkpoint(self.checkpoint_path)
        state = load_checkpoint(self.checkpoint_path)
        if state["total_steps"] != self.total_steps:
            raise S4alError(
                f"{self.checkpoint_path}: made for {state['total_steps']} steps, this run has {self.total_steps}"
            )
        self._check_trained_on_these_labels(state.get("labels"))  # not recorded by older checkpoints
        refuse_other_processes(state, self.checkpoint_path, distributed.world_size())
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        if self.alignment is not None:
            self.alignment.load_state_dict(state["alignment"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # this run's kernels, whichever path saved it
                group.update({"fused": None, "foreach": None} | self.sgd_flags)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history = state["step"], state["history"]
        self.seconds_before = state.get("seconds", 0.0)  # absent from checkpoints saved before it was kept
        self.saved_step = self.step

    def _check_trained_on_these_labels(self, trained_on: dict | None) -> None:
        """Answers change no cycle that has begun training (an import refuses that, and images join a
        run only before), so a checkpoint trained on other labels than given now means they were changed
        behind the run's back: a ledger put back, or (s4al train) masks added to or removed from the
        dataset. The digest holds which images are labelled and the answered patches, not the masks'
        contents: a mask edited in place is trained on as it is now."""
        if trained_on is None or trained_on["digest"] == self.labels["digest"]:
            return
        def counts(labels: dict) -> str:
            return (f"{counted(labels['labelled_images'], 'image')} labelled whole and "
                    f"{counted(labels['answered_regions'], 'answered region')}")

        then, now = counts(trained_on), counts(self.labels)
        raise S4alError(
            f"{self.checkpoint_path}: trained on other labels than it is given now ({then} then, "
            f"{'as many now, answered otherwise' if then == now else now + ' now'}): they changed since (a ledger "
            f"put back from a backup, masks added to or removed from the dataset?). To train cycle {self.cycle} on "
            f"the labels as they are now, delete the checkpoint (rm {shell(self.checkpoint_path)}) and resume; or put "
            "back the labels it was trained with"
        )

    def _evaluate(self, epoch: int) -> None:
        if self.val_dataset is None:
            return
        scores = evaluate(self.teacher.model, self.val_dataset, self.cfg.train.eval_batch_size, self.device, fast=self.cfg.train.fast)
        record = {"cycle": self.cycle, "epoch": epoch, "step": self.step} | scores.as_dict(
            self.val_dataset.classes.names
        )
        self.history.append(record)
        self.progress({"event": "eval", **record})

    def _write_metrics_log(self) -> None:
        write_metrics_log(self.folder.metrics_log, self.cycle, self.history)

    def _save(self) -> None:
        if distributed.is_main():
            # the log first: a kill between the two resumes from the older checkpoint, whose next
            # save rewrites the log, while a final checkpoint is never saved again
            self._write_metrics_log()
            save_checkpoint(self._state(), self.checkpoint_path)
        self.saved_step = self.step

    def _diverged(self, step: int, what: str) -> TrainingDiverged:
        kept = (
            f"the checkpoint {self.checkpoint_path} (step {self.saved_step}) is the last finite state and was kept"
            if self.saved_step is not None
            else "no checkpoint was written yet"
        )
        return TrainingDiverged(
            f"{self.run_dir}, cycle {self.cycle}: training diverged at step {step} of {self.total_steps}: {what}; "
            f"{kept}. Try a lower train.lr (now {self.cfg.train.lr:g})"
            + (", or ssl.enabled: false to see whether the unsupervised losses diverge" if self.ssl else "")
        )

    def _report(self, pending: list[tuple[int, dict[str, torch.Tensor], float]], started: float) -> None:
        """Reads the pending steps' logs off the device at once (one wait for a GPU), stops at the
        first non-finite one, and passes each step's record to `progress`."""
        flat = torch.cat([torch.stack(list(logs.values())).float() for _, logs, _ in pending])
        values = iter(distributed.all_mean(flat).tolist())
        seconds = time.perf_counter() - started
        for step, logs, lr in pending:
            record = {key: next(values) for key in logs}
            bad = [f"{key} is {value}" for key, value in record.items() if not math.isfinite(value)]
            if bad:
                raise self._diverged(step, ", ".join(bad))
            self.progress({"event": "step", "cycle": self.cycle, "step": step, "total": self.total_steps,
                           "seconds": seconds, **record, "lr": lr})

    def _check_finite_state(self) -> None:
        """Parameters and BatchNorm statistics (a batch's variance may overflow while its loss stays finite),
        decided by every rank together: a rank's student statistics are its own until DDP's next broadcast,
        and one rank stopping alone would leave the others waiting."""
        tensors = [t for model in (self.student, self.teacher.model) for t in (*model.parameters(), *model.buffers())
                   if t.is_floating_point()]
        if not distributed.all_min(int(torch.stack([t.isfinite().all() for t in tensors]).all()), self.device):
            raise self._diverged(self.step, "the parameters or BatchNorm statistics are no longer finite")

    def fit(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if distributed.from_main(self.checkpoint_path.exists()):  # ranks on a lagging shared folder resume alike
            self._restore()
        self.fit_started = time.perf_counter()
        with self.cudnn_tuned(), self._stops_wait_for_the_step():
            self._train()
        self._release_graphs()
        if self.stop_requested:  # after the last step, as its loaders closed: the final checkpoint is saved
            raise self._stop([], 0.0)
        distributed.barrier()  # the final checkpoint exists for every rank
        return TrainResult(self.student, self.teacher.model, self.history, self.seconds())

    def seconds(self) -> float:
        """The time spent training this cycle, over every process that trained it."""
        return self.seconds_before + time.perf_counter() - self.fit_started

    def _release_graphs(self) -> None:
        """The CUDA graphs of a training hold memory pools of their own, which a graphed pass's
        reference to itself would keep until Python's cyclic collector ran, maybe after the next
        cycle has captured its own: freed as training ends, for the pool scoring and what follows."""
        if not self.graphs:
            return
        for graphed in (self.student_pass, self.teacher_pass, *self.source.views.values()):
            graphed.release()
        gc.collect()
        torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _stops_wait_for_the_step(self):
        """Within it, in one process, a first Ctrl-C or SIGTERM sets `stop_requested`; a second interrupts at once."""
        self.stop_requested = None
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        handled = [signum for signum, handler in previous.items() if handler not in (signal.SIG_IGN, None)]
        if distributed.world_size() > 1 or threading.current_thread() is not threading.main_thread():
            handled = []

        def put_back():
            for signum in handled:
                signal.signal(signum, previous[signum])

        def request_stop(signum, frame):
            self.stop_requested = signal.Signals(signum)
            put_back()

        for signum in handled:
            signal.signal(signum, request_stop)
        if self.stop_requested:  # a first signal as the handlers were set: the other is no longer a first
            put_back()
        try:
            yield
        finally:
            put_back()

    def _stop(self, pending: list, started: float) -> TrainingStopped:
        if pending:
            self._report(pending, started)
        if self.saved_step != self.step:
            self._check_finite_state()
            self._save()
        return TrainingStopped(f"{self.run_dir}, cycle {self.cycle}: stopped ({self.stop_requested.name}) after step "
                               f"{self.step} of {self.total_steps}, saved in {self.checkpoint_path}", self.stop_requested)

    def _train(self) -> None:
        started = time.perf_counter()
        pending = []
        for batch in self.batches():
            lr = self.scheduler.get_last_lr()[0]  # the rate this step trains with
            logs = self.train_step(self.step, *batch)
            self.step += 1
            pending.append((self.step, logs, lr))
            epoch_end = self.step % self.iters == 0
            if epoch_end or self.step % self.read_every == 0:
                self._report(pending, started)
                pending = []
            if epoch_end:
                self._check_finite_state()
                epoch = self.step // self.iters
                if epoch % self.cfg.train.eval_every == 0 or self.step == self.total_steps:
                    self._evaluate(epoch)
                if epoch % self.cfg.train.checkpoint_every == 0 or self.step == self.total_steps:
                    self._save()
                    self._new_reducer()
            if self.stop_requested:
                raise self._stop(pending, started)
