"""What every dataset provides: decoded (image, label) pairs in original image coordinates."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass

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


def ignore_interrupts(worker_id: int) -> None:
    """The start of a loader worker that training reads (`worker_init_fn`): Ctrl-C reaches the
    whole process group, and a worker it ended would fail the batch the main process waits for
    while that finishes its step (s4al/train/trainer.py); the main process ends its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
