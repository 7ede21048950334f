"""What every dataset provides: decoded (image, label) pairs in original image coordinates."""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch.utils.data

from s4al.data.classes import ClassSet
from s4al.errors import S4alError
from s4al.text import first_of


MAX_BAD_LABELS_SHOWN = 10


def refuse_bad_labels(problems: list[str], files: str = "masks") -> None:
    """Bad labels (SegmentationDataset.label_problems) or images (image_problems) refused all in one
    message, before work that would meet them one at a time later."""
    if len(problems) == 1:
        raise DatasetError(problems[0])
    if problems:
        raise DatasetError(f"{len(problems)} bad {files}: {first_of(problems, MAX_BAD_LABELS_SHOWN, '; ')}")


Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open, in original image pixels


class DatasetError(S4alError):
    """Bad input data; the message names the file and the problem."""


def stops_left_to_the_main_process() -> Callable[[int], None]:
    """The start of a loader worker (`worker_init_fn`). Ctrl-C reaches the whole process group, and a
    batch scheduler's SIGTERM (a preemption, a time limit) every process of the job: a worker they
    ended would fail the batch that training waits for while it finishes its step
    (s4al/train/trainer.py). The worker leaves both to the main process, and ends at a SIGTERM of the
    main process's own (the loader's terminate) or within a second of the main process's end. Where a
    signal's sender cannot be learnt (no sigtimedwait: macOS), or where the worker's threads were
    started before this (the spawn start method imports torch anew), a SIGTERM ends it at once. Under
    forkserver (Python 3.14's default) it ends the fork server, whose workers then end with it: a
    step that waits for a batch from them fails, the last checkpoint kept."""
    return partial(_leave_stops_to, os.getpid())


def _leave_stops_to(main_pid: int, worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigtimedwait"):  # torch's SIGTERM handler is left for a signal that is not blocked
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # in this thread and those it starts
        threading.Thread(target=_end_with, args=(main_pid, _ended(main_pid)), name="stops", daemon=True).start()


def _ended(pid: int) -> Callable[[], bool]:
    """Whether process `pid`, alive now, has ended since (a zombie included)."""
    try:
        handle = os.pidfd_open(pid)  # Linux 5.3: readable once the process has ended
    except (AttributeError, OSError):
        parent = os.getppid()  # the main process where the worker was forked from it
        return lambda: os.getppid() != parent
    ends = select.poll()
    ends.register(handle, select.POLLIN)
    return lambda: bool(ends.poll(0))


def _end_with(main_pid: int, main_ended: Callable[[], bool]) -> None:
    """Waits for the main process's SIGTERM or end, then ends the worker at once, as torch's own
    handler ends it at its parent's SIGTERM: the way out through Python would wait on a pipe that
    nobody reads any more."""
    try:
        while not main_ended():
            received = signal.sigtimedwait({signal.SIGTERM}, 1.0)
            if received is not None and received.si_pid == main_pid:
                break
    finally:  # also if the wait failed: SIGTERM stays blocked, and nothing else could end the worker
        os._exit(0)


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8 class ids, IGNORE_INDEX where void/unlabelled


class SegmentationDataset(torch.utils.data.Dataset):
    """A split of a segmentation dataset. Subclasses set `classes` and implement the three methods.

    `image_id(i)` is a stable, unique, human-readable key (it is what the label ledger stores),
    `image_size(i)` is (H, W) of the original image, `load(i)` decodes and validates one pair,
    `has_label(i)` is False for an image without a label file (it loads as all-ignore).
    `load_image(i)` is the image alone: pool scoring and the unlabelled stream never need the
    label, so datasets backed by files override it to skip decoding one. `load_label(i)` is the
    label alone, equal to `load(i).label`: class counts, the oracle and a new cycle's labels (whose
    images are already decoded) never need the image, which file datasets then do not decode.
    """

    classes: ClassSet

    def __len__(self) -> int:
        raise NotImplementedError

    def image_id(self, index: int) -> str:
        raise NotImplementedError

    def image_ids(self) -> list[str]:
        return [self.image_id(i) for i in range(len(self))]

    def image_size(self, index: int) -> tuple[int, int]:
        return self.load_label(index).shape

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def load_image(self, index: int) -> np.ndarray:
        return self.load(index).image

    def load_label(self, index: int) -> np.ndarray:
        return self.load(index).label

    def has_label(self, index: int) -> bool:
        return True

    def masked(self) -> SegmentationDataset:
        """The split without its images that have no mask (a folder's pool images): what can be scored."""
        return self

    def mask_reading(self) -> dict:
        """How the dataset reads a mask's values as classes, beyond the class names and colours (a
        run keeps it: changed, the same masks would give other labels)."""
        return {}

    def unlisted_images(self) -> list[str]:
        """Images the dataset holds that no split takes (a file left out of every split list)."""
        return []

    def turned_keeping_size(self, indices: Iterable[int]) -> dict[str, int]:
        """{file name: EXIF orientation} of the labelled images of `indices` whose orientation turns
        the picture without changing its size (io.turn_keeping_size); none for generated images."""
        return {}

    def label_problems(self, indices: Iterable[int] | None = None) -> list[str]:
        """What is wrong with the labels of `indices` (every one by default), each read once; a
        dataset that generates its labels has none to check."""
        return []

    def image_problems(self, indices: Iterable[int]) -> list[str]:
        """What keeps the images of `indices` from being read whole (a file cut short, say), each
        decoded once."""
        problems = []
        for index in indices:
            try:
                self.load_image(index)
            except DatasetError as err:
                problems.append(str(err))
        return problems

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)
