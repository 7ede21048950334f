"""Full-resolution evaluation: confusion-matrix mIoU, identical whatever the batch size or the
number of ranks (images are batched only with images of the same size, so no padding touches a
prediction, and under torch.distributed the ranks' confusion matrices are summed). An image too
large to run whole is evaluated tile by tile (s4al/tiles.py), so memory does not grow with it.

On the fast path (train.fast, s4al/inference.py) the split is decoded onto the device once
per process and evaluated in large batches under bf16 autocast on CUDA; the confusion matrix is
counted on the device and read once, at the end."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from s4al import distributed
from s4al.config import DatasetConfig, FastMode
from s4al.data.base import SegmentationDataset
from s4al.data.classes import IGNORE_INDEX
from s4al.inference import bf16_inference, inference_batches, inference_cache
from s4al.errors import S4alWarning
from s4al.text import first_of
from s4al.metrics import Confusion, SegmentationScores, scores_from_confusion
from s4al.tiles import tiled_logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    *,
    fast: FastMode,
) -> SegmentationScores:
    """`fast`: train.fast, whether the split is read from the device (s4al/inference.py)."""
    was_training = model.training
    model.eval()
    cache = inference_cache(dataset, device, fast, labels=True, num_workers=num_workers)
    batches = inference_batches(dataset, range(len(dataset)), batch_size, device, num_workers, cache, labels=True)
    confusion = Confusion(dataset.classes.num_classes, device)
    for images, labels, _ in batches:
        with bf16_inference(cache):
            for (y0, x0, y1, x1), logits in tiled_logits(model, images, device):
                confusion.update(logits.argmax(1), labels[:, y0:y1, x0:x1].to(device, non_blocking=True))
    model.train(was_training)
    matrix = confusion.matrix()
    if distributed.is_main():
        _warn_unseen_classes(dataset, matrix)
    return scores_from_confusion(matrix)


def unscored_split(split_set: SegmentationDataset, split: str, dataset: DatasetConfig) -> str | None:
    """The problem of a split to score of which no pixel is labelled (every mask void, or none): it
    scores nothing, its mIoU undefined; None where a mask labels a pixel. Reads masks up to the
    first that does."""
    if any(split_set.has_label(i) and (split_set.load_label(i) != IGNORE_INDEX).any() for i in range(len(split_set))):
        return None
    return (f"split '{split}' of {dataset.root or dataset.name}: none of its {len(split_set)} images holds a labelled "
            "pixel (every mask is void, or it has none): nothing to score")


def _warn_unseen_classes(dataset: SegmentationDataset, matrix: torch.Tensor) -> None:
    """Names the classes no evaluated pixel holds: mIoU leaves out those the model does not predict
    either, and counts 0 for those it predicts (scores_from_confusion)."""
    truth, predicted = matrix.sum(1).tolist(), matrix.sum(0).tolist()
    if not any(truth):
        warnings.warn(f"the {len(dataset)} evaluated images hold no labelled pixel (every mask is void): nothing is "
                      "scored", S4alWarning)
        return
    unseen = [(name, p > 0) for name, t, p in zip(dataset.classes.names, truth, predicted) if t == 0]
    for is_predicted, what in ((False, "not measured: mIoU averages the other classes"),
                               (True, "0 wherever the model predicts it, and mIoU counts it so")):
        names = [name for name, p in unseen if p == is_predicted]
        if names:
            warnings.warn(f"the {len(dataset)} evaluated images hold no pixel of class {first_of(names)}: "
                          f"{'its IoU is' if len(names) == 1 else 'their IoUs are'} {what}", S4alWarning)
