"""Augmented views keep labels, annotations and validity aligned with their pixels."""

import numpy as np
import pytest
import torch

from s4al.data.base import Sample, SegmentationDataset
from s4al.data.classes import IGNORE_INDEX, ClassSet
from s4al.data.augment import Augment, geometric
from s4al.data.views import LabelledView, StepView, UnlabelledView, rasterize

H, W = 24, 32


def coded_image() -> np.ndarray:
    """Each pixel's colour encodes its (row, col), so any geometric change is traceable."""
    rows, cols = np.mgrid[0:H, 0:W]
    return np.stack([rows * 10, cols * 7, np.full_like(rows, 200)], -1).astype(np.uint8)


def coded_label() -> np.ndarray:
    rows, cols = np.mgrid[0:H, 0:W]
    return ((rows // 6) * 6 + cols // 8).astype(np.uint8)  # an asymmetric 4x4 block pattern


class Coded(SegmentationDataset):
    classes = ClassSet(tuple(f"c{i}" for i in range(24)), tuple((i, i, i) for i in range(24)))

    def __len__(self):
        return 1

    def image_id(self, index):
        return "coded"

    def load(self, index):
        return Sample(coded_image(), coded_label())


def decode(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each pixel's source; rounding absorbs bilinear blending at pixel centres."""
    pixels = image.numpy().astype(np.int64)
    return np.rint(pixels[0] / 10).astype(np.int64), np.rint(pixels[1] / 7).astype(np.int64)


NO_JITTER = dict(color_jitter_p=0.0)


def test_label_follows_pixels_under_flip_and_crop():
    aug = Augment(scale_range=(1.0, 1.0), crop_size=(16, 20), hflip_p=1.0, **NO_JITTER)
    view = LabelledView(Coded(), aug)
    item = view[(0, 123)]
    rows, cols = decode(item["image"])
    assert np.all(np.diff(cols, axis=1) == -1)  # flipped: columns decrease left to right
    np.testing.assert_array_equal(item["label"].numpy(), coded_label()[rows, cols])
    assert item["label"].dtype == torch.uint8  # labels travel to the device as bytes, widened there


def test_label_follows_pixels_under_scale():
    aug = Augment(scale_range=(2.0, 2.0), crop_size=(20, 20), hflip_p=0.0, **NO_JITTER)
    image, planes = geometric(
        torch.from_numpy(coded_image()).permute(2, 0, 1), torch.from_numpy(coded_label())[None], [IGNORE_INDEX],
        np.random.default_rng(5), aug,
    )
    # nearest-neighbour label vs bilinear image: compare at pixel centres of the 2x upsampled grid
    rows, cols = decode(image)
    label = planes[0].numpy()
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_array_equal(label[inner], coded_label()[rows[inner], cols[inner]])


@pytest.mark.parametrize("scale", [0.55, 0.77, 1.3, 1.45])
def test_each_label_pixel_is_the_source_pixel_under_its_centre(scale):
    """At a scale other than 2x a label resized from the top-left corner of each pixel lands half
    a pixel off its image (a pole's labels beside the pole)."""
    aug = Augment(scale_range=(scale, scale), crop_size=None, hflip_p=0.0, **NO_JITTER)
    rows, cols = np.mgrid[0:H, 0:W].astype(np.uint8)
    image, planes = geometric(
        torch.from_numpy(coded_image()).permute(2, 0, 1), torch.from_numpy(np.stack([rows, cols])),
        [IGNORE_INDEX] * 2, np.random.default_rng(3), aug,
    )
    shown = (planes[0] != IGNORE_INDEX).numpy()  # the resized image, padded where it is smaller
    height, width = shown.any(1).sum(), shown.any(0).sum()
    assert shown[:height, :width].all() and (height, width) == (min(round(H * scale), H), min(round(W * scale), W))
    inner = (slice(1, height - 1), slice(1, width - 1))  # bilinear clamps at the borders
    # the bilinear image at a pixel's centre holds its source position, linear in the coordinates
    # (to the uint8 rounding, 0.5 / 10 of a row, 0.5 / 7 of a column)
    for label, source in ((planes[0], image[0] / 10), (planes[1], image[1] / 7)):
        distance = (label.double() - source.double()).abs()[inner]
        assert distance.max() <= 0.5 + 0.5 / 7 + 1e-6


def test_a_large_image_is_computed_in_its_crops_window_as_if_resized_whole(monkeypatch):
    """Over WINDOWED_AUGMENT_PIXELS a sample never resizes the whole image: the same label pixels, the
    image within the uint8 rounding of the whole resize."""
    from s4al.data import augment

    image = torch.from_numpy(coded_image()).permute(2, 0, 1)
    rows, cols = np.mgrid[0:H, 0:W].astype(np.uint8)
    planes = torch.from_numpy(np.stack([rows, cols, coded_label()]))
    fills = [IGNORE_INDEX, IGNORE_INDEX, 7]
    aug = Augment(scale_range=(0.5, 1.6), crop_size=(20, 28), hflip_p=0.5, **NO_JITTER)
    whole = [geometric(image, planes, fills, np.random.default_rng(seed), aug) for seed in range(40)]
    monkeypatch.setattr(augment, "WINDOWED_AUGMENT_PIXELS", H * W - 1)
    monkeypatch.setattr(augment.TF, "resize", None)  # a whole-image resize would fail
    windowed = [geometric(image, planes, fills, np.random.default_rng(seed), aug) for seed in range(40)]
    for (image_whole, planes_whole), (image_windowed, planes_windowed) in zip(whole, windowed):
        assert torch.equal(planes_windowed, planes_whole)
        assert (image_windowed.int() - image_whole.int()).abs().max() <= 1
    assert any((p[0] == IGNORE_INDEX).any() for _, p in whole)  # padded samples among them, and flipped ones
    assert any(p[1][0, 0] > p[1][0, -1] for _, p in whole)


def test_padding_is_ignored_and_invalid():
    aug = Augment(scale_range=(0.5, 0.5), crop_size=(H, W), hflip_p=0.0, **NO_JITTER)
    item = LabelledView(Coded(), aug)[(0, 1)]
    assert (item["label"][H // 2 :, :] == IGNORE_INDEX).all()
    assert (item["label"][: H // 2, : W // 2] != IGNORE_INDEX).all()
    unl = UnlabelledView(Coded(), aug)[(0, 1)]
    assert unl["valid"][: H // 2, : W // 2].all() and not unl["valid"][H // 2 :].any()


def test_unlabelled_views_share_geometry_and_annotations_stay_on_their_pixels():
    patch = np.full((6, 8), 9, np.uint8)
    aug = Augment(scale_range=(1.0, 1.0), crop_size=(20, 28), hflip_p=1.0, color_jitter_p=1.0)
    item = UnlabelledView(Coded(), aug, {0: [((6, 8, 12, 16), patch)]})[(0, 77)]
    rows, cols = decode(item["weak"])
    inside = (rows >= 6) & (rows < 12) & (cols >= 8) & (cols < 16)
    np.testing.assert_array_equal(item["known"].numpy(), inside)
    assert (item["known_label"].numpy()[inside] == 9).all()
    assert (item["known_label"].numpy()[~inside] == IGNORE_INDEX).all()
    assert item["known_label"].dtype == torch.uint8
    assert not torch.equal(item["weak"], item["strong"])  # jitter on the strong view only
    assert item["weak"].shape == item["strong"].shape


def test_same_seed_same_view():
    aug = Augment(crop_size=(16, 16))
    a, b = LabelledView(Coded(), aug)[(0, 42)], LabelledView(Coded(), aug)[(0, 42)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_rasterize_union():
    label, mask = rasterize([((0, 0, 2, 2), np.ones((2, 2), np.uint8)), ((1, 1, 3, 3), np.full((2, 2), 2, np.uint8))], 4, 4)
    assert mask.sum() == 7
    assert label[0, 0] == 1 and label[2, 2] == 2 and label[3, 3] == IGNORE_INDEX


def test_step_view_turns_named_draws_into_named_batches():
    aug = Augment(crop_size=(16, 16))
    draw = {"unlabelled": [(0, 1), (0, 2)], "replay": [(0, 3)]}
    batches = StepView(UnlabelledView(Coded(), aug))[draw]
    assert list(batches) == ["unlabelled", "replay"]
    for name, items in draw.items():
        for key in ("weak", "strong", "known_label", "known", "valid"):
            expected = torch.stack([UnlabelledView(Coded(), aug)[item][key] for item in items])
            assert torch.equal(batches[name][key], expected), (name, key)
