"""ClassMix (Olsson et al. 2021) and the paper's Balanced ClassMix (Sec. 3.3).

Shapes: N images, H x W pixels. Class choices are (N, LABEL_RANGE) bool tables indexed by label
value: chosen[i, c] says whether class c of source image i is pasted. The ignore label is never
chosen, so void source pixels never overwrite the target.

Randomness comes only from the passed CPU torch.Generator, and every choice draws a fixed number
of numbers (N x LABEL_RANGE) whatever the labels hold, so the generator's state after a step does
not depend on the data: runs repeat exactly and resume from a saved generator state.
"""

from __future__ import annotations

import torch

from s4al.data.batches import host_to_device
from s4al.data.classes import IGNORE_INDEX

LABEL_RANGE = IGNORE_INDEX + 1

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images (N,3,H,W), labels (N,H,W), confidence (N,H,W)


def present_classes(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels -> (N, LABEL_RANGE) bool: which classes occur in each image (never ignore)."""
    present = torch.zeros(labels.shape[0], LABEL_RANGE, dtype=torch.bool, device=labels.device)
    present.scatter_(1, labels.flatten(1).long(), True)
    present[:, IGNORE_INDEX] = False
    return present


def random_class_choice(candidates: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Choose counts[i] of the candidate classes of image i uniformly without replacement (all of them
    if fewer). candidates (N, LABEL_RANGE) bool, counts (N,) int -> (N, LABEL_RANGE) bool."""
    keys = host_to_device(torch.rand(candidates.shape, generator=generator, device="cpu"), candidates.device)
    keys = keys.masked_fill(~candidates, 2.0)  # non-candidates rank after every candidate
    rank = keys.argsort(dim=1).argsort(dim=1)
    return candidates & (rank < counts.to(keys.device, non_blocking=True).unsqueeze(1))


def class_mask(labels: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels, (N, LABEL_RANGE) bool choice -> (N, H, W) bool, True where the class is chosen."""
    return chosen.gather(1, labels.flatten(1).long()).view(labels.shape)


def classmix_masks(source_labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ClassMix masks: for each image, half of its present classes, rounded up as in the original
    ClassMix code ((n + n % 2) / 2), chosen uniformly. (N, H, W) labels -> (N, H, W) bool."""
    present = present_classes(source_labels)
    half = (present.sum(1) + 1) // 2
    return class_mask(source_labels, random_class_choice(present, half, generator))


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """where(mask, source, target) with the (N, H, W) mask broadcast over any channel dims of
    source/target, e.g. images (N, 3, H, W) or labels/confidences (N, H, W)."""
    n, h, w = mask.shape
    channel_dims = (1,) * (source.dim() - 3)
    return torch.where(mask.view(n, *channel_dims, h, w), source, target)


def paste(mask: torch.Tensor, source: Batch, target: Batch) -> Batch:
    """Mix images, labels and confidences with the same mask, so they stay aligned pixel for pixel."""
    return tuple(mix(mask, s, t) for s, t in zip(source, target, strict=True))


def classmix_batch(
    images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, generator: torch.Generator
) -> Batch:
    """Within-batch ClassMix: image i receives the chosen classes of image (i + 1) % N (the batch
    rolled by one, as in ClassMix). A batch of one is returned unchanged.

    images (N, 3, H, W), labels (N, H, W) long, confidence (N, H, W) -> the mixed triple, same shapes.
    """
    target = (images, labels, confidence)
    source = tuple(t.roll(-1, dims=0) for t in target)
    return paste(classmix_masks(source[1], generator), source, target)


def split_head_tail(class_pixel_counts: torch.Tensor, head_share: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Split classes by labelled-pixel frequency.

    class_pixel_counts (K,) -> (head ids, tail ids), long, each ordered by count descending, ties by
    class id. Head is the shortest most-frequent prefix whose counts reach head_share of the total;
    the rest is tail, including never-labelled classes (the rarest of all). No labelled pixel at
    all: every class is tail.
    """
    counts = class_pixel_counts.detach().to("cpu", torch.float64)
    order = counts.argsort(descending=True, stable=True)
    cumulative = counts[order].cumsum(0)
    total = cumulative[-1]  # not counts.sum(): another summation order could round differently
    if total <= 0:
        return order[:0], order
    n_head = int((cumulative < head_share * total).sum()) + 1
    return order[:n_head], order[n_head:]


def balanced_class_choice(
    present: torch.Tensor,
    head: torch.Tensor,
    tail: torch.Tensor,
    n_head: int,
    n_tail: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Up to n_head of the head classes and up to n_tail of the tail classes present in each image
    (fewer when fewer are present). present (N, LABEL_RANGE) bool from present_classes, head/tail
    class ids (long) -> (N, LABEL_RANGE) bool."""
    n = present.shape[0]
    in_head = present & _members(head, present.device)
    in_tail = present & _members(tail, present.device)
    head_choice = random_class_choice(in_head, torch.full((n,), n_head, device=present.device), generator)
    tail_choice = random_class_choice(in_tail, torch.full((n,), n_tail, device=present.device), generator)
    return head_choice | tail_choice


def _members(class_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(K,) class ids -> (LABEL_RANGE,) bool membership table."""
    members = torch.zeros(LABEL_RANGE, dtype=torch.bool, device=device)
    # index_fill_, not `members[ids] = True`: that sends True from the host, and a GPU waits for it
    return members.index_fill_(0, host_to_device(class_ids, device), True)


def balanced_classmix_batch(
    current_images: torch.Tensor,
    current_labels: torch.Tensor,
    current_conf: torch.Tensor,
    replay_images: torch.Tensor,
    replay_labels: torch.Tensor,
    replay_conf: torch.Tensor,
    head: torch.Tensor,
    tail: torch.Tensor,
    n_head: int,
    n_tail: int,
    generator: torch.Generator,
) -> Batch:
    """Balanced ClassMix: paste the balanced choice of classes of replay image i onto current image i.

    current_* and replay_* are aligned triples with the same N, H, W: images (N, 3, H, W), labels
    (N, H, W) long (pseudo labels, annotations applied), confidence (N, H, W) -> the mixed triple.
    """
    chosen = balanced_class_choice(present_classes(replay_labels), head, tail, n_head, n_tail, generator)
    return paste(
        class_mask(replay_labels, chosen),
        (replay_images, replay_labels, replay_conf),
        (current_images, current_labels, current_conf),
    )
