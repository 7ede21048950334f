import numpy as np
import pytest

from s4al.data.synthetic import SYNTHETIC_CLASSES, SyntheticStreets

HEAD = ("sky", "building", "road")
TAIL = ("pole", "sign", "pedestrian")


@pytest.fixture(scope="module")
def train_samples():
    dataset = SyntheticStreets("train", 40, 96, 128, seed=0)
    return [dataset[i] for i in range(len(dataset))]


def class_shares(samples):
    labels = np.concatenate([s.label.ravel() for s in samples])
    counts = np.bincount(labels[labels != 255], minlength=SYNTHETIC_CLASSES.num_classes)
    return dict(zip(SYNTHETIC_CLASSES.names, counts / counts.sum())), np.mean(labels == 255)


def test_samples_have_the_declared_shapes_and_classes(train_samples):
    dataset = SyntheticStreets("val", 3, 48, 64, seed=0)
    assert len(dataset) == 3 and dataset.image_id(2) == "val_00002" and dataset.image_size(0) == (48, 64)
    sample = dataset[0]
    assert sample.image.shape == (48, 64, 3) and sample.image.dtype == np.uint8
    assert sample.label.shape == (48, 64) and sample.label.dtype == np.uint8
    values = np.unique(np.concatenate([s.label.ravel() for s in train_samples]))
    assert set(values.tolist()) == set(range(SYNTHETIC_CLASSES.num_classes)) | {255}
    with pytest.raises(IndexError):
        dataset[3]


def test_generation_is_deterministic_per_seed_split_and_index():
    first = SyntheticStreets("train", 2, 48, 64, seed=1)[1]
    again = SyntheticStreets("train", 5, 48, 64, seed=1)[1]
    assert np.array_equal(first.image, again.image) and np.array_equal(first.label, again.label)
    for other in (SyntheticStreets("train", 2, 48, 64, seed=2)[1], SyntheticStreets("val", 2, 48, 64, seed=1)[1],
                  SyntheticStreets("train", 2, 48, 64, seed=1)[0]):
        assert not np.array_equal(first.image, other.image)


def test_class_imbalance_is_camvid_like(train_samples):
    shares, void_share = class_shares(train_samples)
    assert sum(shares[name] for name in HEAD) > 0.7
    assert all(shares[name] > 0.1 for name in HEAD)
    assert all(0.0005 < shares[name] < 0.02 for name in TAIL)
    assert 0.005 < void_share < 0.02


def test_per_pixel_colour_lookup_is_not_enough(train_samples):
    """A colour -> majority class table fitted on train must fail on val: context is needed."""
    val_samples = [s for s in SyntheticStreets("val", 10, 96, 128, seed=0)]

    def flat(samples):
        colours = np.concatenate([s.image.reshape(-1, 3) // 16 for s in samples]).astype(np.int64)
        return colours @ np.array([256, 16, 1]), np.concatenate([s.label.ravel() for s in samples])

    train_bins, train_labels = flat(train_samples)
    keep = train_labels != 255
    votes = np.zeros((16**3, SYNTHETIC_CLASSES.num_classes))
    np.add.at(votes, (train_bins[keep], train_labels[keep]), 1)
    val_bins, val_labels = flat(val_samples)
    keep = val_labels != 255
    accuracy = np.mean(votes.argmax(1)[val_bins[keep]] == val_labels[keep])
    assert accuracy < 0.85
