import numpy as np
import pytest
from PIL import Image

from s4al.data.base import DatasetError
from s4al.data.cityscapes import Cityscapes, PartialCityscapes

# labelIds -> trainIds from the official table: road 7->0, car 26->13, person 24->11,
# bicycle 33->18, unlabeled 0->255, parking 9->255 (ignored in eval), sky 23->10.
LABEL_IDS = np.array([[7, 26, 24, 33], [0, 9, 23, 7]], np.uint8)
TRAIN_IDS = np.array([[0, 13, 11, 18], [255, 255, 10, 0]], np.uint8)
OFFICIAL = {"train": {"aachen": 3, "bremen": 3}, "val": {"frankfurt": 2}}


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def root(tmp_path):
    for split, cities in OFFICIAL.items():
        for city, count in cities.items():
            for i in range(count):
                stem = f"{city}_{i:06d}_000019"
                save(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", np.zeros((2, 4, 3), np.uint8))
                save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", LABEL_IDS)
    return tmp_path


def ids(dataset):
    return dataset.image_ids()


def test_label_ids_map_to_train_ids(root):
    dataset = Cityscapes(root, "test", num_held_out=2)
    assert dataset.classes.num_classes == 19 and dataset.classes.names[13] == "car"
    assert dataset.classes.colors[0] == (128, 64, 128)
    assert np.array_equal(dataset[0].label, TRAIN_IDS)
    assert ids(dataset) == ["frankfurt_000000_000019", "frankfurt_000001_000019"]


def test_paper_protocol_holds_out_a_fixed_part_of_official_train(root):
    train, val = Cityscapes(root, "train", num_held_out=2), Cityscapes(root, "val", num_held_out=2)
    assert len(train) == 4 and len(val) == 2
    assert not set(ids(train)) & set(ids(val))
    assert all(name.startswith(("aachen", "bremen")) for name in ids(train) + ids(val))
    assert ids(Cityscapes(root, "val", num_held_out=2)) == ids(val)
    held_out_by_seed = {tuple(ids(Cityscapes(root, "val", num_held_out=2, held_out_seed=s))) for s in range(6)}
    assert len(held_out_by_seed) > 1


def test_resize_is_bilinear_image_nearest_label(root):
    sample = Cityscapes(root, "test", resize=(4, 8), num_held_out=2)[0]
    assert sample.image.shape == (4, 8, 3)
    assert set(np.unique(sample.label)) <= set(np.unique(TRAIN_IDS))


def test_errors_name_the_file(root):
    bad = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png"
    save(bad, np.full((2, 4), 40, np.uint8))
    with pytest.raises(DatasetError, match=r"frankfurt_000001_000019_gtFine_labelIds.png: label values \[40\]"):
        Cityscapes(root, "test")[1]
    bad.unlink()
    with pytest.raises(DatasetError, match="frankfurt_000001_000019_leftImg8bit.png: missing label"):
        Cityscapes(root, "test")
    with pytest.raises(DatasetError, match="cannot hold out 300"):
        Cityscapes(root, "train")
    with pytest.raises(DatasetError, match="unknown Cityscapes split"):
        Cityscapes(root, "extra")


def test_a_partial_official_train_is_said_to_hold_out_other_images_than_the_papers(tmp_path):
    for i in range(301):  # the paper holds out 300 of the official 2,975
        stem = f"aachen_{i:06d}_000019"
        save(tmp_path / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", np.zeros((2, 4, 3), np.uint8))
        save(tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", LABEL_IDS)
    with pytest.warns(PartialCityscapes, match=f"^{tmp_path / 'leftImg8bit' / 'train'}: 301 images, not the official "
                                               "2975: the 300 held out as val are not the paper protocol's"):
        assert len(Cityscapes(tmp_path, "val")) == 300
