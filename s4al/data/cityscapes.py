"""Cityscapes (official layout, fine labels) mapped to the 19 train ids, split by the paper's protocol.

Paper protocol: "train" = official train minus `num_held_out` images, "val" = those held-out images
(a fixed seeded shuffle of the sorted file list, so always the same ones), "test" = official val.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from s4al.data.base import DatasetError
from s4al.data.classes import IGNORE_INDEX, ClassSet
from s4al.data.io import FilePairDataset, Pair, label_table, list_files, pair_files, require_nonempty
from s4al.errors import S4alWarning

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
SPLITS = ("train", "val", "test")
OFFICIAL_TRAIN_IMAGES = 2975
PAPER_HELD_OUT = 300


class PartialCityscapes(S4alWarning):
    pass


def _is_trained(label) -> bool:
    return 0 <= label.trainId < IGNORE_INDEX


_TRAIN_LABELS = sorted(filter(_is_trained, CITYSCAPES_LABELS), key=lambda label: label.trainId)
CITYSCAPES_CLASSES = ClassSet(
    names=tuple(l.name for l in _TRAIN_LABELS), colors=tuple(tuple(l.color) for l in _TRAIN_LABELS)
)
# trainId 255 and -1 (license plate) are void; ids outside the table are invalid.
ID_TO_TRAIN_ID = label_table(
    {l.id: l.trainId if _is_trained(l) else IGNORE_INDEX for l in CITYSCAPES_LABELS if l.id >= 0}
)


def official_pairs(root: Path, official_split: str) -> list[Pair]:
    label_dir = root / "gtFine" / official_split

    def label_for(image: Path) -> Path:
        return label_dir / image.parent.name / image.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX)

    images = list_files(root / "leftImg8bit" / official_split, [".png"], pattern=f"*/*{IMAGE_SUFFIX}")
    return pair_files(images, label_for)


def held_out_indices(count: int, num_held_out: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(count)[:num_held_out])


class Cityscapes(FilePairDataset):
    classes = CITYSCAPES_CLASSES
    raw_to_class = ID_TO_TRAIN_ID

    def __init__(
        self,
        root: Path,
        split: str,
        resize: tuple[int, int] | None = None,
        num_held_out: int = PAPER_HELD_OUT,
        held_out_seed: int = 0,
    ):
        if split not in SPLITS:
            raise DatasetError(f"{root}: unknown Cityscapes split '{split}', expected one of {SPLITS}")
        self.root = Path(root)
        self.split = split
        self.resize = resize
        if split == "test":
            pairs = official_pairs(self.root, "val")
        else:
            pairs = self._split_official_train(num_held_out, held_out_seed)
        self.pairs = require_nonempty(pairs, split, self.root / "leftImg8bit")

    def _split_official_train(self, num_held_out: int, seed: int) -> list[Pair]:
        train = official_pairs(self.root, "train")
        if len(train) <= num_held_out:
            raise DatasetError(
                f"{self.root / 'leftImg8bit' / 'train'}: {len(train)} images, cannot hold out {num_held_out}"
            )
        if num_held_out == PAPER_HELD_OUT and len(train) != OFFICIAL_TRAIN_IMAGES:  # drawn from the images there
            warnings.warn(f"{self.root / 'leftImg8bit' / 'train'}: {len(train)} images, not the official "
                          f"{OFFICIAL_TRAIN_IMAGES}: the {num_held_out} held out as val are not the paper protocol's; "
                          "extract the whole of leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip to compare "
                          "with it", PartialCityscapes, stacklevel=2)
        held_out = set(held_out_indices(len(train), num_held_out, seed).tolist())
        want_held_out = self.split == "val"
        return [pair for i, pair in enumerate(train) if (i in held_out) == want_held_out]

    def image_id(self, index: int) -> str:
        return self.pairs[index].image.name.removesuffix(IMAGE_SUFFIX)
