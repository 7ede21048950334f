"""Supervised and confidence-weighted unsupervised losses (paper Eqs. 2-5).

Shapes: N images, C classes, H x W pixels. Labels are long with IGNORE_INDEX (255) for void.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from s4al.data.classes import IGNORE_INDEX


def apply_annotations(
    pseudo: torch.Tensor,
    confidence: torch.Tensor,
    annotated_mask: torch.Tensor,
    annotated_labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a pool pixel is already annotated (mask True) its label is the annotation, confidence 1.

    pseudo (N, H, W) long, confidence (N, H, W) float, annotated_mask (N, H, W) bool,
    annotated_labels (N, H, W) int -> (labels, confidence) like the inputs. An annotated void pixel
    keeps label 255 and is therefore ignored by the losses.
    """
    labels = torch.where(annotated_mask, annotated_labels.to(pseudo.dtype), pseudo)
    return labels, confidence.masked_fill(annotated_mask, 1.0)


def confidence_ratio(
    confidence: torch.Tensor, valid_mask: torch.Tensor, threshold: float = 0.97
) -> torch.Tensor:
    """eta (Eq. 4): per image, the fraction of valid pixels whose confidence is > threshold.

    confidence (N, H, W) float, valid_mask (N, H, W) bool -> (N,) float; 0 for an image without
    valid pixels.
    """
    confident = (confidence > threshold) & valid_mask
    return confident.flatten(1).sum(1) / valid_mask.flatten(1).sum(1).clamp_min(1)


def _per_pixel_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss (N, H, W), 0 on ignored pixels; valid mask (N, H, W) bool)."""
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return loss, labels != IGNORE_INDEX


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 2: cross-entropy averaged over the valid pixels of the whole batch; 0 when none is valid.

    logits (N, C, H, W), labels (N, H, W) long -> scalar.
    """
    loss, valid = _per_pixel_ce(logits, labels)
    return loss.sum() / valid.sum().clamp_min(1)


def per_class_normalised(confidence: torch.Tensor, pseudo: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each pixel's confidence divided by the batch's mean confidence over the valid pixels of its
    pseudo label's class, so every class's pseudo labels weigh in total as many as they are while
    the more confident pixels within a class still weigh more. Ignored pixels get 0.

    confidence (N, H, W) float, pseudo (N, H, W) long -> (N, H, W) float."""
    valid = pseudo != IGNORE_INDEX
    classes = pseudo.clamp(max=num_classes - 1)
    weights = valid.to(torch.float64)  # masking by multiplication: boolean indexing would sync a GPU
    # summed in float64: a float32 sum of a CamVid batch's 691,200 confidences of 0.6 gives a mean of 0.596
    total = torch.zeros(num_classes, dtype=torch.float64, device=confidence.device)
    count = torch.zeros_like(total)
    total.index_add_(0, classes.flatten(), (confidence.double() * weights).flatten())
    count.index_add_(0, classes.flatten(), weights.flatten())
    mean = (total / count.clamp_min(1)).to(confidence.dtype)
    return torch.where(valid, confidence / mean[classes].clamp_min(torch.finfo(confidence.dtype).tiny), 0)


def unsupervised_loss(
    logits: torch.Tensor,
    pseudo: torch.Tensor,
    confidence: torch.Tensor,
    eta: torch.Tensor,
    confidence_weighting: bool,
    class_normalised: bool = False,
) -> torch.Tensor:
    """Eqs. 3-5: pixel CE against the pseudo labels, times the pixel's confidence when
    confidence_weighting (Eq. 5), averaged over each image's valid pixels, times that image's eta,
    then averaged over images. An image without valid pixels contributes 0. With class_normalised
    (beyond the paper) the confidence weights are `per_class_normalised`.

    logits (N, C, H, W) student output, pseudo (N, H, W) long, confidence (N, H, W) float,
    eta (N,) float -> scalar. Confidence and eta are targets, so no gradient flows into them.
    """
    loss, valid = _per_pixel_ce(logits, pseudo)
    if confidence_weighting:
        weights = per_class_normalised(confidence, pseudo, logits.shape[1]) if class_normalised else confidence
        loss = loss * weights.detach()
    per_image = loss.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
    return (per_image * eta.detach()).mean()
