import pytest
import torch

from s4al.ssl.classmix import (
    balanced_class_choice,
    balanced_classmix_batch,
    class_mask,
    classmix_batch,
    classmix_masks,
    mix,
    present_classes,
    split_head_tail,
)

PATTERN = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1], [2, 2, 255, 1], [0, 1, 2, 0]])
CAMVID = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist")
CAMVID_SHARES = (16.8, 23.3, 0.98, 31.7, 4.5, 9.7, 1.17, 1.13, 5.9, 0.64, 0.29)


def seeded(seed: int = 3108) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def identifiable_batch(n: int, first_class: int = 0):
    """Image i holds classes first_class + 3i + {0, 1, 2} and one void pixel; every image value and
    confidence encodes (image, channel, row, column), so each output pixel's origin is known."""
    i, c, y, x = torch.meshgrid(torch.arange(n), torch.arange(3), torch.arange(4), torch.arange(4), indexing="ij")
    images = (1000 * i + 100 * c + 10 * y + x).float()
    labels = torch.stack([torch.where(PATTERN == 255, 255, PATTERN + first_class + 3 * k) for k in range(n)])
    confidence = images[:, 0] / 10_000
    return images, labels, confidence


def assert_pasted_from(out, source, target, chosen_count: int):
    """Every output pixel comes whole (image, label, confidence) from source or target, and the pasted
    pixels are exactly the source pixels of `chosen_count` classes."""
    out_images, out_labels, out_conf = out
    from_source = (out_images == source[0]).all(1)
    from_target = (out_images == target[0]).all(1)
    assert (from_source ^ from_target).all()
    for out_t, src_t, tgt_t in ((out_labels, source[1], target[1]), (out_conf, source[2], target[2])):
        assert torch.equal(out_t, torch.where(from_source, src_t, tgt_t))
    for k in range(out_labels.shape[0]):
        chosen = source[1][k][from_source[k]].unique()
        assert len(chosen) == chosen_count
        assert 255 not in chosen.tolist()
        assert torch.equal(from_source[k], torch.isin(source[1][k], chosen))


def test_present_classes_ignores_void():
    labels = torch.stack([PATTERN, torch.full((4, 4), 255)])
    present = present_classes(labels)
    assert present.shape == (2, 256)
    assert present[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert not present[1].any()


def test_classmix_masks_take_half_the_present_classes_rounded_up():
    labels = torch.stack(
        [
            PATTERN,  # 3 classes -> 2
            torch.arange(16).view(4, 4) % 4,  # 4 classes -> 2
            torch.full((4, 4), 7),  # 1 class -> 1
            torch.full((4, 4), 255),  # void only -> nothing
        ]
    )
    masks = classmix_masks(labels, seeded())
    assert masks.dtype == torch.bool and masks.shape == labels.shape
    chosen = [labels[k][masks[k]].unique().tolist() for k in range(4)]
    assert [len(c) for c in chosen] == [2, 2, 1, 0]
    for k in range(4):
        assert torch.equal(masks[k], torch.isin(labels[k], torch.tensor(chosen[k], dtype=torch.long)))


def test_classmix_masks_are_seeded_and_consume_the_generator_independently_of_labels():
    labels = identifiable_batch(2)[1]
    assert torch.equal(classmix_masks(labels, seeded()), classmix_masks(labels, seeded()))
    first, second = seeded(), seeded()
    classmix_masks(labels, first)
    classmix_masks(torch.full((2, 4, 4), 255), second)
    assert torch.equal(first.get_state(), second.get_state())


def test_mix_broadcasts_over_channels():
    mask = torch.tensor([[[True, False]]])
    images = mix(mask, torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))
    assert images.tolist() == [[[[1.0, 0.0]]] * 3]
    assert mix(mask, torch.tensor([[[5, 6]]]), torch.tensor([[[7, 8]]])).tolist() == [[[5, 8]]]


def test_classmix_batch_pastes_from_the_next_image_and_keeps_pixels_aligned():
    batch = identifiable_batch(3)
    out = classmix_batch(*batch, seeded())
    source = tuple(t.roll(-1, dims=0) for t in batch)  # image i receives from image (i + 1) % 3
    assert_pasted_from(out, source, batch, chosen_count=2)


def classmix_of(labels: torch.Tensor, head: torch.Tensor, tail: torch.Tensor, generator: torch.Generator):
    images, _, confidence = identifiable_batch(len(labels))
    return classmix_batch(images, labels, confidence, generator)


def balanced_of(labels: torch.Tensor, head: torch.Tensor, tail: torch.Tensor, generator: torch.Generator):
    current, (images, _, confidence) = identifiable_batch(len(labels), first_class=100), identifiable_batch(len(labels))
    return balanced_classmix_batch(*current, images, labels, confidence, head, tail, 3, 2, generator)


@pytest.mark.parametrize("mixer", [classmix_of, balanced_of])
def test_mixing_consumes_the_generator_alike_whatever_the_labels_and_classes(mixer):
    """Exact resume relies on it: a step's draws must not depend on what its batches hold."""
    varied, void = seeded(), seeded()
    mixer(identifiable_batch(2)[1], torch.tensor([0, 1, 3]), torch.tensor([2, 4, 5]), varied)  # 6 classes present
    mixer(torch.full((2, 4, 4), 255), torch.tensor([7]), torch.tensor([], dtype=torch.long), void)  # none; no tail
    assert torch.equal(varied.get_state(), void.get_state())
    assert not torch.equal(varied.get_state(), seeded().get_state())  # it does draw


def test_split_head_tail_on_camvid_shares():
    head, tail = split_head_tail(torch.tensor(CAMVID_SHARES), head_share=0.8)
    assert [CAMVID[k] for k in head] == ["Road", "Building", "Sky", "Tree"]
    assert [CAMVID[k] for k in tail] == [
        "Car", "Pavement", "SignSymbol", "Fence", "Pole", "Pedestrian", "Bicyclist"
    ]


def test_split_head_tail_ties_unseen_classes_and_no_labels():
    head, tail = split_head_tail(torch.tensor([5, 5, 0, 10]), head_share=0.5)
    assert head.tolist() == [3] and tail.tolist() == [0, 1, 2]  # tie 0/1 broken by class id
    head, tail = split_head_tail(torch.tensor([3, 0, 1]), head_share=1.0)
    assert head.tolist() == [0, 2] and tail.tolist() == [1]  # never-labelled class stays tail
    head, tail = split_head_tail(torch.zeros(3, dtype=torch.long))
    assert head.tolist() == [] and tail.tolist() == [0, 1, 2]


def test_balanced_choice_picks_only_present_classes_in_the_right_numbers():
    head, tail = torch.tensor([3, 1, 0, 5]), torch.tensor([8, 4, 6, 7, 2, 9, 10])
    labels = torch.zeros(3, 2, 4, dtype=torch.long)
    labels[0] = torch.tensor([[0, 1, 3, 4], [5, 8, 255, 0]])  # head {0, 1, 3, 5}, tail {4, 8}
    labels[1] = torch.tensor([[3, 3, 9, 9], [3, 9, 255, 255]])  # head {3}, tail {9}
    labels[2] = 255
    chosen = balanced_class_choice(present_classes(labels), head, tail, 3, 2, seeded())
    assert chosen.shape == (3, 256)
    picked = [set(chosen[k].nonzero().flatten().tolist()) for k in range(3)]
    assert len(picked[0] & {0, 1, 3, 5}) == 3 and picked[0] - {0, 1, 3, 5} == {4, 8}
    assert picked[1] == {3, 9}
    assert picked[2] == set()
    only_tail = balanced_class_choice(present_classes(labels), head, tail, 0, 1, seeded())
    assert only_tail[0].sum() == 1 and only_tail[0, [4, 8]].sum() == 1


def test_balanced_choice_is_uniform_within_a_group():
    labels = torch.tensor([[0, 1, 3, 5]]).expand(2000, 1, 4)
    head, tail = torch.tensor([0, 1, 3, 5]), torch.tensor([7])
    chosen = balanced_class_choice(present_classes(labels), head, tail, 3, 2, seeded())
    assert chosen.sum(1).eq(3).all()
    for k in (0, 1, 3, 5):
        assert chosen[:, k].sum().item() == pytest.approx(1500, abs=90)


def test_balanced_classmix_batch_pastes_replay_i_onto_current_i():
    current = identifiable_batch(2, first_class=100)
    replay_images, replay_labels, replay_conf = identifiable_batch(2)
    replay = (replay_images + 500, replay_labels, replay_conf + 0.5)
    head, tail = torch.tensor([0, 3]), torch.tensor([1, 2, 4, 5])  # image 0: head {0}, tail {1, 2}
    out = balanced_classmix_batch(*current, *replay, head, tail, 1, 1, seeded())
    assert_pasted_from(out, replay, current, chosen_count=2)
    nothing_chosen = torch.zeros(2, 256, dtype=torch.bool)
    assert not class_mask(replay_labels, nothing_chosen).any()


def head_tail_batches():
    """Current images of classes 100-105, replay images 0-2 and 3-5 (each as in PATTERN) shifted so
    that every pasted value is told from the current one; head 0, 1, 3, 4 and tail 2, 5."""
    current = identifiable_batch(2, first_class=100)
    replay_images, replay_labels, replay_conf = identifiable_batch(2)
    replay = (replay_images + 500, replay_labels, replay_conf + 0.5)
    return current, replay, torch.tensor([0, 1, 3, 4]), torch.tensor([2, 5])


def test_balanced_classmix_without_head_classes_pastes_exactly_the_tail_class():
    current, replay, head, tail = head_tail_batches()
    out = balanced_classmix_batch(*current, *replay, head, tail, 0, 1, seeded())
    tail_pixels = (PATTERN == 2).expand(2, 4, 4)  # class 2 in image 0, class 5 in image 1: the only tail ones
    assert torch.equal(out[0], torch.where(tail_pixels[:, None], replay[0], current[0]))
    for out_t, replay_t, current_t in zip(out[1:], replay[1:], current[1:]):
        assert torch.equal(out_t, torch.where(tail_pixels, replay_t, current_t))


def test_balanced_classmix_without_tail_classes_pastes_one_head_class_and_never_the_tail_one():
    current, replay, head, tail = head_tail_batches()
    out = balanced_classmix_batch(*current, *replay, head, tail, 1, 0, seeded())
    assert_pasted_from(out, replay, current, chosen_count=1)
    pasted = [set(out[1][k][out[1][k] < 100].tolist()) for k in range(2)]
    assert pasted[0] <= {0, 1} and pasted[1] <= {3, 4}
