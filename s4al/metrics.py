"""Segmentation scores from a confusion matrix (rows: ground truth, columns: prediction)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from s4al.data.classes import IGNORE_INDEX


def confusion_meter(num_classes: int) -> MulticlassConfusionMatrix:
    """Accumulates over batches; under torch.distributed it sums the matrix across ranks."""
    return MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)


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
