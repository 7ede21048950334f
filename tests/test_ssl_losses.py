import math

import pytest
import torch

from s4al.ssl.losses import (
    apply_annotations, confidence_ratio, per_class_normalised, supervised_loss,
    unsupervised_loss,
)

# One image, two classes, 1 x 2 pixels: pixel 0 logits (2, 0), pixel 1 logits (0.5, 1.5).
LOGITS = torch.tensor([[2.0, 0.5], [0.0, 1.5]]).view(1, 2, 1, 2)
CE_PIXEL0_CLASS0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
CE_PIXEL1_CLASS0 = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(1.5)))
CE_PIXEL1_CLASS1 = -math.log(math.exp(1.5) / (math.exp(0.5) + math.exp(1.5)))


def test_annotations_override_pseudo_labels_with_confidence_one():
    pseudo = torch.tensor([[[0, 1], [2, 1]]])
    confidence = torch.tensor([[[0.5, 0.6], [0.7, 0.8]]])
    mask = torch.tensor([[[True, False], [False, True]]])
    annotated = torch.tensor([[[2, 9], [9, 255]]], dtype=torch.uint8)
    labels, weights = apply_annotations(pseudo, confidence, mask, annotated)
    assert labels.dtype == torch.long
    assert labels.tolist() == [[[2, 1], [2, 255]]]
    assert torch.allclose(weights, torch.tensor([[[1.0, 0.6], [0.7, 1.0]]]))


def test_confidence_ratio_counts_valid_pixels_strictly_above_threshold():
    confidence = torch.tensor(
        [
            [[0.98, 0.50], [0.97, 0.99]],  # 2 of 4 valid pixels are > 0.97 (0.97 itself is not)
            [[0.99, 0.99], [0.10, 0.99]],  # valid: top row only -> 2 of 2
            [[0.99, 0.99], [0.99, 0.99]],  # no valid pixel -> 0
        ]
    )
    valid = torch.tensor(
        [
            [[True, True], [True, True]],
            [[True, True], [False, False]],
            [[False, False], [False, False]],
        ]
    )
    assert confidence_ratio(confidence, valid, 0.97).tolist() == [0.5, 1.0, 0.0]


def test_confidence_weighted_ce_by_hand():
    pseudo = torch.tensor([[[0, 0]]])
    confidence = torch.tensor([[[0.9, 0.6]]])
    eta = torch.tensor([0.5])
    weighted = unsupervised_loss(LOGITS, pseudo, confidence, eta, confidence_weighting=True)
    plain = unsupervised_loss(LOGITS, pseudo, confidence, eta, confidence_weighting=False)
    assert weighted.item() == pytest.approx(0.5 * (0.9 * CE_PIXEL0_CLASS0 + 0.6 * CE_PIXEL1_CLASS0) / 2)
    assert plain.item() == pytest.approx(0.5 * (CE_PIXEL0_CLASS0 + CE_PIXEL1_CLASS0) / 2)


def test_per_class_normalised_confidence_by_hand():
    pseudo = torch.tensor([[[0, 0], [1, 255]]])
    confidence = torch.tensor([[[0.9, 0.5], [0.4, 0.8]]])
    # class 0: mean 0.7; class 1: mean 0.4; the ignored pixel gets 0
    expected = torch.tensor([[[0.9 / 0.7, 0.5 / 0.7], [1.0, 0.0]]])
    assert torch.allclose(per_class_normalised(confidence, pseudo, 3), expected)


def test_a_void_pixel_counts_in_no_class_mean_the_last_included():
    """Void (255) pixels index no class: the last class's mean is over its own pixels alone (0.5 / 0.5)."""
    pseudo = torch.tensor([[[2, 255, 255]]])
    confidence = torch.tensor([[[0.5, 0.9, 0.9]]])
    assert per_class_normalised(confidence, pseudo, 3).tolist() == [[[1.0, 0.0, 0.0]]]


def test_class_normalised_confidence_weighting_by_hand():
    pseudo = torch.tensor([[[0, 1]]])
    confidence = torch.tensor([[[0.9, 0.6]]])
    eta = torch.tensor([0.5])
    # one pixel per class: each weight is its confidence over itself, 1
    loss = unsupervised_loss(LOGITS, pseudo, confidence, eta, True, class_normalised=True)
    assert loss.item() == pytest.approx(0.5 * (CE_PIXEL0_CLASS0 + CE_PIXEL1_CLASS1) / 2)
    # two pixels of class 0, mean confidence 0.75: weights 0.9 / 0.75 = 1.2 and 0.6 / 0.75 = 0.8
    loss = unsupervised_loss(LOGITS, torch.tensor([[[0, 0]]]), confidence, eta, True, class_normalised=True)
    assert loss.item() == pytest.approx(0.5 * (1.2 * CE_PIXEL0_CLASS0 + 0.8 * CE_PIXEL1_CLASS0) / 2)


def test_class_means_of_the_normalised_confidence_are_over_the_whole_batch():
    pseudo = torch.tensor([[[0, 0]], [[0, 255]]])
    confidence = torch.tensor([[[0.9, 0.5]], [[0.4, 0.7]]])
    # class 0 over both images: (0.9 + 0.5 + 0.4) / 3 = 0.6 (one mean per image would give 0.7 and 0.4)
    expected = torch.tensor([[[1.5, 0.5 / 0.6]], [[0.4 / 0.6, 0.0]]])
    assert torch.allclose(per_class_normalised(confidence, pseudo, 2), expected)


def test_class_means_of_a_camvid_sized_batch_are_exact():
    """4 x 360 x 480 pixels, all of class 0 and 0.6 sure: every weight is 1 (a float32 running sum
    gave a mean of 0.596, weights of 1.007)."""
    confidence = torch.full((4, 360, 480), 0.6)
    weights = per_class_normalised(confidence, torch.zeros(4, 360, 480, dtype=torch.long), 9)
    assert torch.allclose(weights, torch.ones(()), rtol=0, atol=1e-6)


def test_annotated_pixel_gets_weight_one():
    pseudo, confidence = apply_annotations(
        torch.tensor([[[0, 0]]]),
        torch.tensor([[[0.9, 0.6]]]),
        torch.tensor([[[False, True]]]),
        torch.tensor([[[0, 1]]]),
    )
    loss = unsupervised_loss(LOGITS, pseudo, confidence, torch.tensor([1.0]), confidence_weighting=True)
    assert loss.item() == pytest.approx((0.9 * CE_PIXEL0_CLASS0 + 1.0 * CE_PIXEL1_CLASS1) / 2)


def test_ignored_pixels_are_excluded_from_the_mean():
    pseudo = torch.tensor([[[0, 255]]])
    confidence = torch.tensor([[[0.9, 0.6]]])
    loss = unsupervised_loss(LOGITS, pseudo, confidence, torch.tensor([1.0]), confidence_weighting=True)
    assert loss.item() == pytest.approx(0.9 * CE_PIXEL0_CLASS0)


def test_all_ignore_image_contributes_zero_not_nan():
    logits = torch.cat([LOGITS, LOGITS]).requires_grad_()
    pseudo = torch.tensor([[[0, 0]], [[255, 255]]])
    confidence = torch.tensor([[[0.9, 0.6]], [[0.9, 0.6]]])
    eta = torch.tensor([0.5, 1.0])
    loss = unsupervised_loss(logits, pseudo, confidence, eta, confidence_weighting=True)
    expected_first = 0.5 * (0.9 * CE_PIXEL0_CLASS0 + 0.6 * CE_PIXEL1_CLASS0) / 2
    assert loss.item() == pytest.approx(expected_first / 2)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[1] == 0).all()


def test_no_gradient_flows_into_confidence_or_eta():
    confidence = torch.tensor([[[0.9, 0.6]]], requires_grad=True)
    eta = torch.tensor([0.5], requires_grad=True)
    logits = LOGITS.clone().requires_grad_()
    unsupervised_loss(logits, torch.tensor([[[0, 1]]]), confidence, eta, confidence_weighting=True).backward()
    assert logits.grad is not None
    assert confidence.grad is None and eta.grad is None


def test_supervised_loss_mean_over_valid_pixels():
    labels = torch.tensor([[[0, 1]]])
    assert supervised_loss(LOGITS, labels).item() == pytest.approx((CE_PIXEL0_CLASS0 + CE_PIXEL1_CLASS1) / 2)
    assert supervised_loss(LOGITS, torch.tensor([[[255, 1]]])).item() == pytest.approx(CE_PIXEL1_CLASS1)
    # over the batch's 3 valid pixels, not a mean of the images' means ((a + b) / 2 + b) / 2
    labels = torch.tensor([[[0, 1]], [[255, 1]]])
    expected = (CE_PIXEL0_CLASS0 + 2 * CE_PIXEL1_CLASS1) / 3
    assert supervised_loss(torch.cat([LOGITS, LOGITS]), labels).item() == pytest.approx(expected)


def test_supervised_loss_without_valid_pixel_is_zero_with_zero_gradient():
    logits = LOGITS.clone().requires_grad_()
    loss = supervised_loss(logits, torch.tensor([[[255, 255]]]))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()
