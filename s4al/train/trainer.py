"""The one training loop: supervised when there is no pool (or SSL is off), otherwise the
paper's mean-teacher learner with Confidence Weighting and Balanced ClassMix (Eqs. 1-6).

Each of the three losses is backpropagated on its own as soon as it is computed, so only one
training graph is alive at a time (the sum's gradient is the same; peak memory is a third)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from s4al import distributed
from s4al.config import RunConfig
from s4al.data.base import SegmentationDataset
from s4al.data.classes import IGNORE_INDEX
from s4al.data.views import Annotations, Augment, LabelledView, UnlabelledView
from s4al.evaluate import evaluate, to_model_input
from s4al.model import build_model
from s4al.ssl.alignment import ALIGNERS
from s4al.ssl.batchnorm import frozen_bn_statistics
from s4al.ssl.classmix import balanced_classmix_batch, classmix_batch, classmix_masks, paste, split_head_tail
from s4al.ssl.losses import (
    apply_annotations, class_balance_weights, confidence_ratio, supervised_loss, unsupervised_loss,
)
from s4al.ssl.mean_teacher import MeanTeacher, pseudo_labels_from_probs
from s4al.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from s4al.train.sampling import StepBatches, Stream, derive_seed, seeded_generator


@dataclass
class TrainData:
    dataset: SegmentationDataset  # the train split
    labelled: list[int]  # fully labelled indices (and partially labelled ones when SSL is off)
    pool: list[int] = field(default_factory=list)  # unlabelled indices, the SSL stream
    annotations: Annotations = field(default_factory=dict)  # answered regions, by dataset index


@dataclass
class TrainResult:
    student: nn.Module
    teacher: nn.Module
    history: list[dict]  # one entry per evaluation

    @property
    def final_scores(self) -> dict:
        """The last evaluation's scores, without where in training it was made."""
        return {k: v for k, v in self.history[-1].items() if k not in ("cycle", "epoch", "step")}


def labelled_class_counts(data: TrainData, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts per class (whole labelled images, answered regions). Their sum, everything an
    annotator labelled, gives the head/tail split; the whole images alone, drawn without regard to
    any score, estimate the class distribution, which the acquired regions over-sample on purpose."""
    whole, regions = np.zeros(num_classes, dtype=np.int64), np.zeros(num_classes, dtype=np.int64)
    for index in data.labelled:
        if index not in data.annotations:
            whole += np.bincount(data.dataset.load(index).label.ravel(), minlength=256)[:num_classes]
    for patches in data.annotations.values():
        for _, patch in patches:
            regions += np.bincount(patch.ravel(), minlength=256)[:num_classes]
    return whole, regions


def labelled_draws(data: TrainData, max_copies: int = 64) -> list[int]:
    """The labelled stream's multiset: a partially labelled image (SSL off) appears in proportion to
    the share of it that is labelled, a whole image as often as the thinnest share asks for, at most
    `max_copies` times. So every labelled pixel is about equally likely to reach the supervised loss:
    drawn uniformly, hundreds of images with a few bought cells each crowd the whole images out of
    the batches (CamVid `cpu`, region entropy without SSL: mIoU 28 -> 17 after one cycle).
    Without partially labelled images (every SSL run): every image once."""
    shares = {
        i: sum(patch.size for _, patch in data.annotations[i]) / np.prod(data.dataset.image_size(i))
        for i in data.labelled
        if i in data.annotations
    }
    copies = min(max_copies, round(1 / min(shares.values()))) if shares else 1
    return [i for i in data.labelled for _ in range(max(1, round(copies * shares.get(i, 1.0))))]


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
        self.epochs = epochs or cfg.train.epochs
        self.total_steps = self.epochs * self.iters
        self.ssl = cfg.ssl.enabled and bool(data.pool)
        self.cold_steps = cfg.ssl.cold_start_epochs * self.iters if self.ssl else 0
        self.checkpoint_path = checkpoint_path(self.run_dir, cycle)
        self.progress = progress if progress is not None and distributed.is_main() else (lambda info: None)

        torch.manual_seed(derive_seed(cfg.seed, "init", cycle))  # the decoder's random initialisation
        self.student = build_model(cfg.model, self.num_classes).to(self.device)
        if init_state is not None:
            self.student.load_state_dict(init_state)
        self.teacher = MeanTeacher(self.student, cfg.ssl.ema_momentum, cfg.ssl.teacher_train_mode)
        self.net = self._parallel(self.student)  # what the loop calls forward on
        t = cfg.train
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
        )
        # Poly decay per iteration (the authors' code steps it per epoch; per iteration is smoother
        # and is what DeepLab's "poly" policy specifies).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, poly_schedule(self.total_steps, t.poly_power))
        self.head, self.tail, self.alignment, self.class_weights = [], [], None, None
        if self.ssl:
            whole, regions = (torch.from_numpy(c) for c in labelled_class_counts(data, self.num_classes))
            self.head, self.tail = split_head_tail(whole + regions, cfg.ssl.head_share)
            # The class distribution: bought regions over-sample the classes the scores favour, so
            # they count only where nothing else is labelled (own data), the best estimate there is.
            distribution = whole if whole.sum() > 0 else whole + regions
            if cfg.ssl.class_balance_power > 0:
                self.class_weights = class_balance_weights(distribution, cfg.ssl.class_balance_power).to(self.device)
            if cfg.ssl.distribution_alignment != "off":
                estimate_steps = self.iters if cfg.ssl.alignment_target == "labelled_x_predicted" else 0
                aligner = ALIGNERS[cfg.ssl.distribution_alignment]
                self.alignment = aligner(distribution, cfg.ssl.ema_momentum, estimate_steps=estimate_steps)
        self.step = 0
        self.history: list[dict] = []
        self.amp = self.device.type == "cuda" and t.amp

    def _parallel(self, student: nn.Module) -> nn.Module:
        if distributed.world_size() == 1:
            return student
        if self.cfg.train.sync_bn and self.device.type == "cuda":
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        return DistributedDataParallel(student, device_ids=[self.device] if self.device.type == "cuda" else None)

    def _synced(self, last: bool):
        """DDP reduces gradients once per step: in the last backward; earlier ones accumulate."""
        return contextlib.nullcontext() if last or self.net is self.student else self.net.no_sync()

    # ---- schedule -------------------------------------------------------------------------
    def _epoch(self, step: int) -> int:
        return step // self.iters

    def _replay_on(self, step: int) -> bool:
        s = self.cfg.ssl
        return (
            self.ssl
            and s.replay
            and self.cycle >= s.balanced_from_cycle
            and self._epoch(step) >= max(s.balanced_from_epoch, s.cold_start_epochs)
        )

    def _loaders(self) -> tuple[Iterator[dict], Iterator[dict] | None]:
        cfg, seed, workers = self.cfg, self.cfg.seed, self.cfg.train.num_workers
        pin = self.device.type == "cuda"
        aug = Augment(
            scale_range=cfg.train.scale_range,
            crop_size=cfg.train.crop_size,
            hflip_p=cfg.train.hflip_p,
            color_jitter_p=cfg.train.color_jitter_p,
        )
        shard = {"rank": distributed.rank(), "world_size": distributed.world_size()}
        labelled = StepBatches(
            Stream(labelled_draws(self.data), seed, "labelled", self.cycle), cfg.train.batch_size, self.step, self.total_steps,
            **shard,
        )
        partial = {} if self.ssl else self.data.annotations
        labelled_view = LabelledView(self.data.dataset, aug, partial)
        labelled_batches = iter(DataLoader(labelled_view, batch_sampler=labelled, num_workers=workers, pin_memory=pin))
        if not self.ssl:
            return labelled_batches, None
        unlabelled = StepBatches(
            Stream(self.data.pool, seed, "pool", self.cycle),
            cfg.train.unlabelled_batch_size,
            max(self.step, self.cold_steps),
            self.total_steps,
            first_step=self.cold_steps,
            replay_size=cfg.ssl.replay_size if cfg.ssl.replay else 0,
            replay_on=self._replay_on,
            **shard,
        )
        unlabelled_view = UnlabelledView(self.data.dataset, aug, self.data.annotations)
        unlabelled_batches = DataLoader(unlabelled_view, batch_sampler=unlabelled, num_workers=workers, pin_memory=pin)
        return labelled_batches, iter(unlabelled_batches)

    # ---- one iteration --------------------------------------------------------------------
    def _on_device(self, batch_tensor: torch.Tensor) -> torch.Tensor:
        return batch_tensor.to(self.device, non_blocking=True)  # pinned on a GPU: asynchronous

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            return self.net(images).float()

    def _unsup(self, images, pseudo, confidence, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.cfg.ssl
        eta = confidence_ratio(confidence, pseudo != IGNORE_INDEX, s.confidence_threshold)
        mask_threshold = s.confidence_threshold if s.mask_unconfident else None
        with self._synced(last), frozen_bn_statistics(self.student, s.freeze_bn_on_unlabelled):
            logits = self._forward(images)
            loss = unsupervised_loss(
                logits, pseudo, confidence, eta, s.confidence_weighting, mask_threshold, class_weights=self.class_weights,
                class_normalised=s.class_normalised_confidence,
            )
            loss.backward()
        return loss.detach(), eta.mean()

    def _pseudo_labels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        weak = to_model_input(batch["weak"], self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            probs = self.teacher.probabilities(weak)
        valid = self._on_device(batch["valid"])
        if self.alignment is not None:
            self.alignment.update(probs, valid, distributed.all_mean)
            probs = self.alignment(probs)
        pseudo, confidence = pseudo_labels_from_probs(probs)
        known = self._on_device(batch["known"])
        pseudo, confidence = apply_annotations(pseudo, confidence, known, self._on_device(batch["known_label"]))
        pseudo = pseudo.masked_fill(~valid, IGNORE_INDEX)
        return pseudo, confidence

    def _ssl_losses(self, step: int, batch: dict) -> dict[str, torch.Tensor]:
        s, n = self.cfg.ssl, self.cfg.train.unlabelled_batch_size
        pseudo, confidence = self._pseudo_labels(batch)
        strong = to_model_input(batch["strong"], self.device)
        generator = seeded_generator(self.cfg.seed, "mix", self.cycle, step)
        current = strong[:n], pseudo[:n], confidence[:n]
        mixed = classmix_batch(*current, generator) if s.classmix else current
        replaying = len(strong) > n  # the sampler appended a replay batch
        logs = dict(zip(("loss/unsup", "eta/unsup"), self._unsup(*mixed, last=not replaying)))
        if replaying:
            replay = strong[n:], pseudo[n:], confidence[n:]
            if s.balanced_classmix:
                mixed = balanced_classmix_batch(*current, *replay, self.head, self.tail, s.n_head, s.n_tail, generator)
            else:
                mixed = paste(classmix_masks(replay[1], generator), replay, current)
            logs.update(zip(("loss/replay", "eta/replay"), self._unsup(*mixed, last=True)))
        return logs

    def _train_step(self, step: int, labelled: dict, unlabelled: dict | None) -> dict[str, float]:
        torch.manual_seed(derive_seed(self.cfg.seed, "step", self.cycle, step))  # dropout, resumable
        self.optimizer.zero_grad(set_to_none=True)
        sup_weight = self.cfg.ssl.cold_start_sup_weight if step < self.cold_steps else 1.0
        images = to_model_input(labelled["image"], self.device)
        with self._synced(last=unlabelled is None):
            labels = self._on_device(labelled["label"]).long()  # uint8 in the batch: an eighth of the copy
            loss = supervised_loss(self._forward(images), labels) * sup_weight
            loss.backward()
        logs = {"loss/sup": loss.detach()}
        if unlabelled is not None:
            logs.update(self._ssl_losses(step, unlabelled))
        self.optimizer.step()
        self.scheduler.step()
        self.teacher.update(self.student, step)
        # Ranks share parameters (DDP) but each saw its own batch statistics: keep one teacher.
        distributed.broadcast_buffers(self.teacher.model)
        values = distributed.all_mean(torch.stack(list(logs.values())).float()).tolist()
        return dict(zip(logs, values)) | {"lr": self.scheduler.get_last_lr()[0]}

    # ---- checkpoints, evaluation, the loop --------------------------------------------------
    def _state(self) -> dict:
        return {
            "cycle": self.cycle,
            "step": self.step,
            "total_steps": self.total_steps,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "alignment": self.alignment.state_dict() if self.alignment else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "config": self.cfg.model_dump(mode="json"),
            "classes": list(self.data.dataset.classes.names),
        }

    def _restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        if state["total_steps"] != self.total_steps:
            raise ValueError(
                f"{self.checkpoint_path}: made for {state['total_steps']} steps, this run has {self.total_steps}"
            )
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        if self.alignment is not None:
            self.alignment.load_state_dict(state["alignment"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history = state["step"], state["history"]

    def _evaluate(self, epoch: int) -> None:
        if self.val_dataset is None:
            return
        net = self.teacher.model if self.cfg.train.eval_network == "teacher" else self.student
        scores = evaluate(net, self.val_dataset, self.cfg.train.eval_batch_size, self.device)
        record = {"cycle": self.cycle, "epoch": epoch, "step": self.step} | scores.as_dict(
            self.val_dataset.classes.names
        )
        self.history.append(record)
        self.progress({"event": "eval", **record})

    def _write_metrics_log(self) -> None:
        """RUN_DIR/metrics.jsonl: other cycles' lines, then this cycle's history, rewritten whole
        after each checkpoint, so a resumed cycle never logs an evaluation twice."""
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if json.loads(line)["cycle"] != self.cycle]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept + [json.dumps(r) for r in self.history]))
        tmp.replace(path)

    def _save(self) -> None:
        if distributed.is_main():
            save_checkpoint(self._state(), self.checkpoint_path)
            self._write_metrics_log()

    def fit(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.checkpoint_path.exists():
            self._restore()
        labelled_batches, unlabelled_batches = self._loaders()
        started = time.perf_counter()
        while self.step < self.total_steps:
            unlabelled = next(unlabelled_batches) if self.step >= self.cold_steps and unlabelled_batches else None
            logs = self._train_step(self.step, next(labelled_batches), unlabelled)
            self.step += 1
            self.progress({"event": "step", "cycle": self.cycle, "step": self.step, "total": self.total_steps,
                           "seconds": time.perf_counter() - started, **logs})
            if self.step % self.iters == 0:
                epoch = self.step // self.iters
                if epoch % self.cfg.train.eval_every == 0 or self.step == self.total_steps:
                    self._evaluate(epoch)
                if epoch % self.cfg.train.checkpoint_every == 0 or self.step == self.total_steps:
                    self._save()
        distributed.barrier()  # the final checkpoint exists for every rank
        return TrainResult(self.student, self.teacher.model, self.history)
