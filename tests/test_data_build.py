import numpy as np
import pytest
from PIL import Image

from s4al.config import DatasetConfig
from s4al.data import CamVid, DatasetError, SyntheticStreets, build_dataset


def test_synthetic_sizes_follow_config():
    cfg = DatasetConfig(synthetic={"num_train": 5, "num_val": 2, "height": 32, "width": 48})
    train, test = build_dataset(cfg, "train", seed=3), build_dataset(cfg, "test", seed=3)
    assert isinstance(train, SyntheticStreets) and (len(train), len(test)) == (5, 2)
    assert train[0].label.shape == (32, 48)
    assert np.array_equal(build_dataset(cfg, "train", seed=3)[0].image, train[0].image)
    resized = build_dataset(cfg.model_copy(update={"resize": (40, 56)}), "val")
    assert resized.image_size(0) == (40, 56) and resized[0].image.shape == (40, 56, 3)
    with pytest.raises(DatasetError, match="unknown split 'extra'"):
        build_dataset(cfg, "extra")


def test_file_dataset_gets_root_and_resize(tmp_path):
    for folder in ("train", "trainannot"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "train" / "x.png")
    Image.fromarray(np.full((3, 4), 11, np.uint8)).save(tmp_path / "trainannot" / "x.png")
    dataset = build_dataset(DatasetConfig(name="camvid", root=tmp_path, resize=(6, 8)), "train")
    assert isinstance(dataset, CamVid)
    assert dataset[0].label.shape == (6, 8) and (dataset[0].label == 255).all()
