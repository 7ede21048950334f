"""Datasets: CamVid, Cityscapes, a user folder and the built-in synthetic streets, built from config."""

from __future__ import annotations

from pathlib import Path

from s4al.config import DatasetConfig
from s4al.data.base import DatasetError, Sample, SegmentationDataset
from s4al.data.camvid import CamVid
from s4al.data.cityscapes import Cityscapes
from s4al.data.classes import IGNORE_INDEX, ClassSet
from s4al.data.folder import ImageFolder
from s4al.data.synthetic import SyntheticStreets

__all__ = [
    "CamVid", "ClassSet", "Cityscapes", "DatasetError", "IGNORE_INDEX", "ImageFolder", "Sample",
    "SegmentationDataset", "SyntheticStreets", "build_dataset",
]

FILE_DATASETS = {"camvid": CamVid, "cityscapes": Cityscapes}
SYNTHETIC_SPLITS = ("train", "val", "test")


def build_dataset(cfg: DatasetConfig, split: str, seed: int = 0) -> SegmentationDataset:
    """One split of the configured dataset; `seed` only drives the synthetic generator."""
    if cfg.name != "synthetic" and not Path(cfg.root).is_dir():
        relative = "" if Path(cfg.root).is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
        raise DatasetError(f"{cfg.root}: no such dataset folder{relative}")
    if cfg.name == "folder":  # images without masks only in the train split (the pool); evaluation needs masks
        return ImageFolder(cfg.root, split, resize=cfg.resize, allow_unlabelled=split == cfg.train_split)
    if cfg.name != "synthetic":
        return FILE_DATASETS[cfg.name](cfg.root, split, resize=cfg.resize)
    if split not in SYNTHETIC_SPLITS:
        raise DatasetError(f"synthetic dataset: unknown split '{split}', expected one of {SYNTHETIC_SPLITS}")
    synthetic = cfg.synthetic
    height, width = cfg.resize or (synthetic.height, synthetic.width)  # generated at that size directly
    num_images = synthetic.num_train if split == "train" else synthetic.num_val
    return SyntheticStreets(split, num_images, height, width, seed)
