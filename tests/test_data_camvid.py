from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4al.data.base import DatasetError
from s4al.data.camvid import CamVid

REAL_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
RAW_LABEL = np.array([[0, 3, 11, 10], [11, 8, 9, 2], [1, 4, 5, 6]], np.uint8)  # 11 = void


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_camvid(root, split="train", names=("a", "b"), label=RAW_LABEL):
    for name in names:
        save(root / split / f"{name}.png", np.full((*label.shape, 3), 100, np.uint8))
        save(root / f"{split}annot" / f"{name}.png", label)
    return root


def test_loads_pairs_and_maps_void_to_ignore(tmp_path):
    dataset = CamVid(make_camvid(tmp_path), "train")
    assert len(dataset) == 2 and dataset.classes.num_classes == 11
    assert [dataset.image_id(i) for i in range(2)] == ["a", "b"]
    assert dataset.image_size(0) == (3, 4)
    sample = dataset[0]
    assert sample.image.shape == (3, 4, 3) and sample.image.dtype == np.uint8
    assert sample.label.dtype == np.uint8
    assert np.array_equal(sample.label, np.where(RAW_LABEL == 11, 255, RAW_LABEL))


def test_uses_split_list_file_when_present(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train.txt").write_text("train/b.png trainannot/b.png\n")
    dataset = CamVid(tmp_path, "train")
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["b"]


def test_segnet_tutorials_own_lists_of_absolute_paths_read_and_an_image_listed_twice_is_refused(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train.txt").write_text("/SegNet/CamVid/train/b.png /SegNet/CamVid/trainannot/b.png\n"
                                        "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
    dataset = CamVid(tmp_path, "train")
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["b", "a"]
    assert dataset.pairs[0].image == tmp_path / "train" / "b.png"
    (tmp_path / "train.txt").write_text("train/b.png trainannot/b.png\n\ntrain/a.png trainannot/a.png\n"
                                        "train/b.png trainannot/a.png\n")
    with pytest.raises(DatasetError, match=r"train.txt:4: image b is listed on line 1 too"):
        CamVid(tmp_path, "train")
    (tmp_path / "train.txt").write_text("old/train/b.png trainannot/b.png\n")  # a relative path is taken as given
    with pytest.raises(DatasetError, match=rf"train.txt:1: missing pair file {tmp_path}/old/train/b.png"):
        CamVid(tmp_path, "train")


def test_resize_changes_sample_and_reported_size(tmp_path):
    dataset = CamVid(make_camvid(tmp_path), "train", resize=(6, 8))
    assert dataset.image_size(0) == (6, 8)
    assert dataset[0].label.shape == (6, 8) and dataset[0].image.shape == (6, 8, 3)


def test_label_value_outside_valid_set_names_file(tmp_path):
    make_camvid(tmp_path, label=np.array([[0, 12], [3, 3]], np.uint8))
    with pytest.raises(DatasetError, match=r"trainannot/a.png: label values \[12\]"):
        CamVid(tmp_path, "train")[0]


def test_size_mismatch_names_both_files(tmp_path):
    make_camvid(tmp_path)
    save(tmp_path / "trainannot" / "b.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DatasetError, match="trainannot/b.png.*differs from image .*train/b.png"):
        CamVid(tmp_path, "train")[1]


def test_missing_label_and_empty_split_are_errors(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "trainannot" / "b.png").unlink()
    with pytest.raises(DatasetError, match="train/b.png: missing label"):
        CamVid(tmp_path, "train")
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        CamVid(tmp_path, "val")
    with pytest.raises(DatasetError, match="test: folder not found"):
        CamVid(tmp_path, "test")


def test_corrupt_image_names_file(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="train/a.png"):
        CamVid(tmp_path, "train")[0]


@pytest.mark.camvid
def test_real_camvid_copy():
    if not (REAL_CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not present at {REAL_CAMVID}")
    splits = {split: CamVid(REAL_CAMVID, split) for split in ("train", "val")}
    assert {split: len(d) for split, d in splits.items()} == {"train": 367, "val": 101}
    for dataset in splits.values():
        assert {dataset.image_size(i) for i in range(len(dataset))} == {(360, 480)}
        values = set()
        for pair in dataset.pairs:  # labels only: decoding every image would be slow
            values |= set(np.unique(dataset.read_label(pair)).tolist())
        assert values <= set(range(11)) | {255} and 255 in values
    sample = splits["train"][0]
    assert sample.image.shape == (360, 480, 3) and sample.label.shape == (360, 480)
