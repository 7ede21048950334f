"""What one training learns from (TrainData: the labelled images, the pool, the answered regions)
and what is said about it before it begins: classes no labelled pixel holds, crops larger than the
images."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from s4al.data.base import SegmentationDataset
from s4al.data.classes import IGNORE_INDEX, class_pixel_counts
from s4al.data.views import Annotations
from s4al.errors import S4alWarning
from s4al.text import first_of
from s4al.train.batches import Streams

VOID_SHARE_NOTED = 0.25  # of the labelled pixels: a share this large of void is named where a class has none


@dataclass
class TrainData:
    dataset: SegmentationDataset  # the train split
    labelled: list[int]  # the fully labelled images
    pool: list[int] = field(default_factory=list)  # every other image
    annotations: Annotations = field(default_factory=dict)  # the pool images' answered regions

    def labels(self) -> dict:
        """What the training learns from, as counts and a digest of every image id and answered patch: a
        checkpoint keeps it, so one trained on other labels (a ledger restored since) is told apart."""
        digest = hashlib.sha256()
        ids = self.dataset.image_id
        for name, images in (("labelled", self.labelled), ("pool", self.pool)):
            digest.update(f"{name}:{','.join(sorted(ids(i) for i in images))};".encode())
        for index in sorted(self.annotations, key=ids):
            for box, patch in sorted(self.annotations[index], key=lambda answer: tuple(answer[0])):
                digest.update(f"{ids(index)}:{tuple(box)}:".encode())
                digest.update(np.ascontiguousarray(patch, dtype=np.uint8).tobytes())
        return {"labelled_images": len(self.labelled), "answered_regions": sum(map(len, self.annotations.values())),
                "digest": digest.hexdigest()}

    def streams(self, ssl: bool) -> Streams:
        """What each batch stream trains on. With SSL the answered regions train inside the pool
        stream (ground truth over the pseudo labels; also supervising them in the labelled stream
        cost 6 mIoU on CamVid); without it the pool images with answers join the labelled stream,
        labelled in their regions only, and there is no pool stream."""
        if ssl:
            return Streams(self.labelled, {}, self.pool, self.annotations)
        return Streams(sorted({*self.labelled, *self.annotations}), self.annotations, [], {})


def labelled_class_counts(data: TrainData, num_classes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Pixel counts per class (whole labelled images, answered regions), and the void pixels of
    both. The counts' sum, everything an annotator labelled, gives the head/tail split; the whole
    images alone, drawn without regard to any score, estimate the class distribution, which the
    acquired regions over-sample on purpose."""
    whole = class_pixel_counts(data.dataset.load_label(index) for index in data.labelled)
    regions = class_pixel_counts(patch for patches in data.annotations.values() for _, patch in patches)
    return whole[:num_classes], regions[:num_classes], int(whole[IGNORE_INDEX] + regions[IGNORE_INDEX])


def warn_unlabelled_classes(names: tuple[str, ...], counts: np.ndarray, void: int) -> None:
    """Says which classes no labelled pixel holds, and how many labelled pixels are void where they
    are many (a class stored as the ignore value, e.g. 255 in 0/255 masks, is void to s4al)."""
    missing = [name for name, count in zip(names, counts) if count == 0]
    if not missing:
        return
    void_share = void / max(1, void + int(counts.sum()))
    voids = (f"; {void_share:.0%} of the labelled pixels are void (the dataset's ignore value: does a mask store "
             "a class as it?)") if void_share >= VOID_SHARE_NOTED else ""
    warnings.warn(f"no labelled pixel of class {first_of(missing)}: the model cannot learn "
                  f"{'it' if len(missing) == 1 else 'them'} until some are labelled{voids}", S4alWarning)


def warn_padded_crops(crop_size: tuple[int, int], scale_range: tuple[float, float],
                      sizes: list[tuple[int, int]]) -> None:
    """Says when train.crop_size is larger than every training image even at the largest scale:
    part of every crop is then padding, which trains nothing and dilutes BatchNorm's statistics."""
    if not sizes:
        return
    top = max(scale_range)
    fits = tuple(int(top * max(size[k] for size in sizes)) for k in (0, 1))
    if crop_size[0] > fits[0] or crop_size[1] > fits[1]:
        warnings.warn(f"train.crop_size {crop_size[0]}x{crop_size[1]} is larger than the training images scaled by "
                      f"{top:g} (train.scale_range): every crop is part padding, which trains nothing; set "
                      f"train.crop_size to at most {fits[0]}x{fits[1]}, or null for whole images", S4alWarning)
