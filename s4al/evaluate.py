"""Full-resolution evaluation: confusion-matrix mIoU, identical whatever the batch size or the
number of ranks (images are batched only with images of the same size, so no padding touches a
prediction, and under torch.distributed the ranks' confusion matrices are summed)."""

from __future__ import annotations

import torch
from torch import nn

from s4al.data.base import SegmentationDataset
from s4al.data.batches import image_batches, to_model_input
from s4al.metrics import SegmentationScores, confusion_meter, scores_from_confusion


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: SegmentationDataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> SegmentationScores:
    was_training = model.training
    model.eval()
    meter = confusion_meter(dataset.classes.num_classes).to(device)
    pin = device.type == "cuda"
    for images, labels, _ in image_batches(dataset, batch_size, num_workers, shard=True, pin_memory=pin):
        meter.update(model(to_model_input(images, device)).argmax(1), labels.to(device))
    model.train(was_training)
    return scores_from_confusion(meter.compute().cpu())  # summed over ranks by torchmetrics
