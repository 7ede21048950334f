"""Segmentation scores from a confusion matrix (rows: ground truth, columns: prediction)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s4al import distributed
from s4al.data.classes import IGNORE_INDEX


class Confusion:
    """A confusion matrix accumulated over batches on their device, IGNORE_INDEX pixels left out.
    Counted with index_add_ rather than torchmetrics' confusion matrix, whose boolean indexing and
    bincount make the host wait for a GPU at every batch to learn an output size."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes**2 + 1, dtype=torch.int64, device=device)  # last bin: ignored

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        n = self.num_classes
        pairs = torch.where(labels == IGNORE_INDEX, n**2, labels.long() * n + predictions)
        self.counts.index_add_(0, pairs.flatten(), torch.ones((), dtype=torch.int64, device=pairs.device).expand(pairs.numel()))

    def matrix(self) -> torch.Tensor:
        """(num_classes, num_classes) on the CPU, summed over torch.distributed ranks."""
        counts = distributed.all_sum(self.counts).cpu()
        return counts[:-1].view(self.num_classes, self.num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    miou: float
    iou: tuple[float, ...]  # per class; NaN for a class absent from both ground truth and prediction
    recall: tuple[float, ...]  # per class; NaN for a class absent from the ground truth
    pixel_accuracy: float

    def as_dict(self, class_names: tuple[str, ...]) -> dict:
        def clean(v: float) -> float | None:
            return None if v != v else round(v, 6)

        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "iou": {n: clean(v) for n, v in zip(class_names, self.iou)},
            "recall": {n: clean(v) for n, v in zip(class_names, self.recall)},
        }


def scores_from_confusion(confusion: torch.Tensor) -> SegmentationScores:
    """mIoU averages the IoU of the classes that occur in the ground truth or the prediction."""
    cm = confusion.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    recall = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    return SegmentationScores(
        miou=float(iou.nanmean()) if (union > 0).any() else float("nan"),
        iou=tuple(iou.tolist()),
        recall=tuple(recall.tolist()),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
    )
