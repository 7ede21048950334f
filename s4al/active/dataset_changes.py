"""What changed in a run's dataset since the run was made: images added (those with a label join
the labelled where active.initial is 'labelled'), masks given to pool images, and what a resume
refuses (images gone or resized, the labels of images labelled whole gone, and, where
active.initial is 'random', images added without a label). The run takes the additions as a cycle
begins (ActiveLearningRun); `s4al status` says them before. A mask given to a pool image is read,
to warn where it is mostly void: an answer to a few regions put in the dataset's masks/ by mistake
would label its image whole, never to be asked again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from s4al.active.ledger import ImageRecord
from s4al.config import RunConfig
from s4al.data.base import DatasetError, SegmentationDataset
from s4al.data.classes import IGNORE_INDEX
from s4al.text import counted, first_of, named


MOSTLY_VOID = 0.9  # a share of void pixels no whole-image label has (CamVid's: 0-20%, Cityscapes coarse: ~50%)


@dataclass(frozen=True)
class DatasetChanges:
    added_labelled: list[str]  # images added with a label, to join as labelled (active.initial 'labelled')
    added_pool: list[str]  # the other images added, to join the pool
    masked: list[str]  # pool images with a label now, to be labelled whole (active.initial 'labelled')
    refusals: list[str]  # what a resume refuses, a message each
    mostly_void: dict[str, float] = field(default_factory=dict)  # masks of `masked` over MOSTLY_VOID void: share
    unlisted: str = ""  # images of the dataset no split file lists, in words; empty where none

    @property
    def added(self) -> list[str]:
        return self.added_labelled + self.added_pool

    def text(self) -> str:
        """The additions in words; empty where there are none."""
        parts = [f"{counted(len(self.added), 'image')} added to the dataset ({len(self.added_labelled)} labelled, "
                 f"{len(self.added_pool)} to the pool: {first_of(self.added)})"] if self.added else []
        if self.masked:
            parts.append(f"{counted(len(self.masked), 'pool image')} given a mask, labelled whole "
                         f"({first_of(self.masked)}; the mask answers what is still asked of it)")
        if self.mostly_void:
            masks = [f"{image_id} ({share:.0%} void)" for image_id, share in self.mostly_void.items()]
            parts.append(f"warning: mostly void masks, each to label its image whole, never to be asked again: "
                         f"{first_of(masks)}; a mask answering a few asked regions belongs in `s4al import`, not "
                         "in the dataset's masks")
        return "; ".join(parts)


def dataset_changes(records: Sequence[ImageRecord], dataset: SegmentationDataset, cfg: RunConfig) -> DatasetChanges:
    """The changes of `dataset` (the run's train split) against the run's image `records`."""
    index_of = {dataset.image_id(i): i for i in range(len(dataset))}
    registered = {r.image_id: (r.height, r.width) for r in records}
    labelled_mode = cfg.active.initial == "labelled"

    def has_label(image_id: str) -> bool:
        return dataset.has_label(index_of[image_id])

    added = [i for i in index_of if i not in registered]
    in_no_split = set(dataset.unlisted_images())  # in images/, listed in no split file
    gone = [i for i in registered if i not in index_of and i not in in_no_split]
    unlisted_gone = [i for i in registered if i not in index_of and i in in_no_split]
    resized = [i for i in registered if i in index_of and tuple(dataset.image_size(index_of[i])) != registered[i]]
    label_gone = [r.image_id for r in records if r.fully_labelled and r.image_id in index_of
                  and not has_label(r.image_id)]
    unlabelled = [] if labelled_mode else [i for i in added if not has_label(i)]
    where = f"{cfg.dataset.root or cfg.dataset.name}, split '{cfg.dataset.train_split}'"
    split_file = f"{cfg.dataset.train_split}.txt"
    refusals = [f"{where}: {named('image', _quoted(images))}: {said.format(s='s' if len(images) > 1 else '')}{hint}"
                for images, said, hint in (
        (gone, "in this run's ledger but no longer in the dataset: put the image{s} back",
         _renamed_hint(gone, added, registered, dataset, index_of)),
        (unlisted_gone, f"in this run's ledger but no longer listed in {split_file}: list the image{{s}} there again",
         ""),
        (resized, "changed size since the run was made: restore the original{s}", ""),
        (label_gone, "labelled whole in this run, but the mask{s} left the dataset (training would read all "
                     "void): put the mask{s} back", ""),
        (unlabelled, "added without a label, and with active.initial 'random' every image needs one: give the "
                     "image{s} a mask or move the image{s} out", ""),
    ) if images]
    added_labelled = [i for i in added if labelled_mode and has_label(i)]
    masked = [r.image_id for r in records if labelled_mode and not r.fully_labelled and r.image_id in index_of
              and has_label(r.image_id)]
    outside = sorted(in_no_split - registered.keys())
    unlisted = (f"warning: {where}: {counted(len(outside), 'image')} in images/ but in no split file, so out of the "
                f"run: {first_of(_quoted(outside))}; to add {'them' if len(outside) > 1 else 'it'} to the run, list "
                f"{'them' if len(outside) > 1 else 'it'} in {split_file}") if outside else ""
    void = {} if refusals else {image_id: _void_share(dataset, index_of[image_id]) for image_id in masked}
    return DatasetChanges(added_labelled, [i for i in added if i not in set(added_labelled)], masked, refusals,
                          {image_id: share for image_id, share in void.items() if share > MOSTLY_VOID}, unlisted)


def _renamed_hint(gone: list[str], added: list[str], registered: dict[str, tuple[int, int]],
                  dataset: SegmentationDataset, index_of: dict[str, int]) -> str:
    """Where images of the sizes of those gone were added, no more of them than are gone: perhaps
    the gone ones renamed."""
    sizes_gone = {registered[i] for i in gone}
    if not sizes_gone:
        return ""
    renamed = [i for i in added if _size_or_none(dataset, index_of[i]) in sizes_gone]
    if not renamed or len(renamed) > len(gone):
        return ""
    return f" (renamed? {first_of(_quoted(renamed))} {'were' if len(renamed) > 1 else 'was'} added, of the same size)"


def _size_or_none(dataset: SegmentationDataset, index: int) -> tuple[int, int] | None:
    try:
        return tuple(dataset.image_size(index))
    except (DatasetError, OSError):  # an unreadable addition: the run says so as it joins
        return None


def _void_share(dataset: SegmentationDataset, index: int) -> float:
    """The share of void pixels in the image's mask; 0 for one that cannot be read (its error is
    the training's to give, naming it, not a reason to hide the rest of the account)."""
    try:
        return float((dataset.load_label(index) == IGNORE_INDEX).mean())
    except (DatasetError, OSError):
        return 0.0


def _quoted(image_ids: list[str]) -> list[str]:
    return [f"'{i}'" for i in image_ids]
