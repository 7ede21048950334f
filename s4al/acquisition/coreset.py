"""Image-level Core-Set baseline (Sener & Savarese, 2018): greedy k-center selection on image features."""

from __future__ import annotations

import torch
from torch import Tensor


def pooled_features(encoder_output: Tensor) -> Tensor:
    """(N, C, h, w) encoder feature map -> (N, C) global average pool."""
    if encoder_output.dim() != 4:
        raise ValueError(f"encoder output must be (N, C, h, w), got shape {tuple(encoder_output.shape)}")
    return encoder_output.float().mean(dim=(2, 3))


def _distances(features: Tensor, centers: Tensor) -> Tensor:
    # The matrix-multiply shortcut of cdist rounds differently with batch size; the direct form
    # keeps distances (and hence ties and picks) reproducible.
    return torch.cdist(features, centers, compute_mode="donot_use_mm_for_euclid_dist")


def _nearest_to_mean(features: Tensor) -> int:
    return int(_distances(features, features.mean(dim=0, keepdim=True)).squeeze(1).argmin())


def k_center_greedy(features: Tensor, labelled_mask: Tensor, budget: int) -> list[int]:
    """Indices of up to `budget` unlabelled points, each maximising its distance to the nearest
    labelled-or-already-chosen point (ties: lowest index). Returns fewer if the pool runs out.

    With no labelled point the first pick is the point nearest the feature mean: the most central
    image, a deterministic stand-in for the random first centre of the original algorithm.
    """
    if features.dim() != 2 or labelled_mask.shape != features.shape[:1]:
        raise ValueError(
            f"features must be (N, D) and labelled_mask (N,), got "
            f"{tuple(features.shape)} and {tuple(labelled_mask.shape)}"
        )
    features = features.float()
    labelled = labelled_mask.to(device=features.device, dtype=torch.bool)
    available = ~labelled
    budget = min(budget, int(available.sum()))
    if budget <= 0:
        return []
    picks: list[int] = []
    if labelled.any():
        min_distance = _distances(features, features[labelled]).amin(dim=1)
    else:
        picks.append(_nearest_to_mean(features))
        available[picks[0]] = False
        min_distance = _distances(features, features[picks[0] : picks[0] + 1]).squeeze(1)
    while len(picks) < budget:
        pick = int(torch.where(available, min_distance, float("-inf")).argmax())
        picks.append(pick)
        available[pick] = False
        min_distance = torch.minimum(min_distance, _distances(features, features[pick : pick + 1]).squeeze(1))
    return picks
