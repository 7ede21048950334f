"""The device path's batched views land every sample on the same source pixels as the loader
path's views (s4al/data/views.py) with the same seeds: a coordinate-coded image, label, annotated
mask and validity, compared sample by sample."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from s4al.data.classes import IGNORE_INDEX
from s4al.data.device_augment import LABELLED, UNLABELLED, color_jitter, draw_params
from s4al.data.device_cache import DeviceCache, MixedImageSizes
from s4al.data.augment import Augment
from s4al.data.views import LabelledView, UnlabelledView
from s4al.seeding import derive_seed
from test_views import H, W, Coded, coded_image, coded_label

CPU = torch.device("cpu")
SEEDS = [derive_seed(7, "aug", p) for p in range(48)]
# scales from half to 1.5x, so samples are shrunk (antialiased), enlarged, padded and cropped
GEOMETRY = dict(scale_range=(0.5, 1.5), crop_size=(20, 28), hflip_p=0.5)
PATCH = ((6, 8, 12, 16), np.full((6, 8), 9, np.uint8))


def stacked(view, seeds):
    items = [view[(0, seed)] for seed in seeds]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def test_labelled_batch_has_the_loader_views_geometry():
    aug = Augment(**GEOMETRY, color_jitter_p=0.0)
    old = stacked(LabelledView(Coded(), aug), SEEDS)
    new = LABELLED.build(DeviceCache(Coded(), labelled=[0], pool=[], device=CPU), [(0, s) for s in SEEDS], aug)
    assert torch.equal(new["label"], old["label"])  # nearest neighbour: the same source pixel, exactly
    assert (old["label"] == IGNORE_INDEX).any() and (old["label"] != IGNORE_INDEX).any()  # padding was drawn
    # bilinear: the coded values are linear in the coordinates, so both resizes reproduce them
    # up to the loader's uint8 rounding
    assert (new["image"] * 255 - old["image"].float()).abs().max() <= 1.0
    assert new["image"].dtype == torch.float32 and new["image"].is_contiguous(memory_format=torch.channels_last)


def test_unlabelled_batch_has_the_loader_views_geometry_for_annotations_and_validity():
    aug = Augment(**GEOMETRY, color_jitter_p=0.0)
    old = stacked(UnlabelledView(Coded(), aug, {0: [PATCH]}), SEEDS)
    cache = DeviceCache(Coded(), labelled=[], pool=[0], device=CPU, annotations={0: [PATCH]})
    new = UNLABELLED.build(cache, [(0, s) for s in SEEDS], aug)
    for key in ("known_label", "known", "valid"):
        assert torch.equal(new[key], old[key]), key
    assert old["known"].any() and not old["valid"].all()
    assert (new["weak"] * 255 - old["weak"].float()).abs().max() <= 1.0
    assert torch.equal(new["weak"], new["strong"])  # no jitter drawn


def test_the_pool_images_own_label_never_reaches_the_cache():
    cache = DeviceCache(Coded(), labelled=[], pool=[0], device=CPU)
    assert len(cache.labels) == 0  # no plane at all for a pool image
    assert torch.equal(cache.images[0], torch.from_numpy(coded_image()).permute(2, 0, 1))


def test_partial_labels_replace_the_label_of_a_labelled_image():
    cache = DeviceCache(Coded(), labelled=[0], pool=[], device=CPU, partial={0: [PATCH]})
    expected = np.full((H, W), IGNORE_INDEX, np.uint8)
    expected[6:12, 8:16] = 9
    assert torch.equal(cache.labels[cache.label_rows([0])[0]], torch.from_numpy(expected))
    assert torch.equal(DeviceCache(Coded(), [0], [], CPU).labels[0], torch.from_numpy(coded_label()))


def test_same_seeds_same_batch_and_the_draws_are_the_views_draws():
    aug = Augment(**GEOMETRY)
    cache = DeviceCache(Coded(), labelled=[0], pool=[], device=CPU)
    items = [(0, s) for s in SEEDS[:8]]
    a, b = LABELLED.build(cache, items, aug), LABELLED.build(cache, items, aug)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    # hand-checked draw of one seed: default_rng(seed) gives scale, top, left, flip, then jitter
    rng = np.random.default_rng(SEEDS[0])
    scale = rng.uniform(0.5, 1.5)
    size = (round(H * scale), round(W * scale))
    top = rng.integers(0, max(size[0], 20) - 20 + 1)
    left = rng.integers(0, max(size[1], 28) - 28 + 1)
    flip = rng.random() < 0.5
    assert draw_params([SEEDS[0]], H, W, aug)[0, :5].tolist() == [*size, top, left, flip]


def test_batched_jitter_is_torchvisions_per_sample_jitter():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 10, 12, generator=generator)
    params = torch.zeros(6, 10, dtype=torch.float64)
    params[:, 5:] = torch.tensor([[1, 1.3, 0.7, 1.2, 0.08], [1, 0.6, 1.4, 0.6, -0.1], [0, 0, 0, 0, 0],
                                  [1, 1.0, 1.0, 1.0, 0.0], [1, 0.9, 1.1, 1.4, 0.03], [1, 1.4, 0.6, 0.8, -0.05]])
    got = color_jitter(images, params)
    for image, (jittered, b, c, s, hue), out in zip(images, params[:, 5:].tolist(), got):
        expected = image
        if jittered:
            expected = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(
                image, b), c), s), hue)
        torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def test_jittered_batch_is_close_to_the_loader_views_uint8_jitter():
    aug = Augment(**GEOMETRY, color_jitter_p=1.0)
    old = stacked(LabelledView(Coded(), aug), SEEDS[:16])
    new = LABELLED.build(DeviceCache(Coded(), labelled=[0], pool=[], device=CPU), [(0, s) for s in SEEDS[:16]], aug)
    # the loader truncates to uint8 after each of five operations; the device path stays in float
    assert (new["image"] * 255 - old["image"].float()).abs().max() <= 6


def test_the_strong_view_is_the_jittered_weak_view_as_the_loaders():
    aug = Augment(**GEOMETRY, color_jitter_p=1.0)
    old = stacked(UnlabelledView(Coded(), aug, {0: [PATCH]}), SEEDS[:16])
    cache = DeviceCache(Coded(), labelled=[], pool=[0], device=CPU, annotations={0: [PATCH]})
    new = UNLABELLED.build(cache, [(0, s) for s in SEEDS[:16]], aug)
    assert (new["weak"] * 255 - old["weak"].float()).abs().max() <= 1.0  # the weak view is never jittered
    assert (new["strong"] * 255 - old["strong"].float()).abs().max() <= 6
    assert (new["strong"] - new["weak"]).abs().amax(dim=(1, 2, 3)).min() > 0.02  # every sample jittered


class TwoSizes(Coded):
    def __len__(self):
        return 2

    def image_id(self, index):
        return f"image{index}"

    def image_size(self, index):
        return (H, W) if index == 0 else (H + 1, W)


def test_mixed_image_sizes_are_refused_naming_both_images():
    with pytest.raises(MixedImageSizes, match=r"image1 is 25x32 but image0 is 24x32.*train.fast: off"):
        DeviceCache(TwoSizes(), labelled=[0, 1], pool=[], device=CPU)
