import pytest
import torch

from s4al.ssl.alignment import DistributionAlignment


def probs_map(*pixels):
    """(1, C, 1, P) probabilities from P per-pixel class distributions."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, len(pixels[0]), 1, len(pixels))


def test_alignment_by_hand_flips_an_under_predicted_class():
    align = DistributionAlignment(torch.tensor([50, 50]), momentum=0.0)  # target (0.5, 0.5)
    align.update(probs_map([0.8, 0.2]), torch.ones(1, 1, 1, dtype=torch.bool))  # running := (0.8, 0.2)
    aligned = align(probs_map([0.6, 0.4]))
    # (0.6 * 0.5/0.8, 0.4 * 0.5/0.2) = (0.375, 1.0), normalised
    assert aligned.flatten().tolist() == pytest.approx([0.375 / 1.375, 1.0 / 1.375])


def test_running_marginal_is_an_ema_over_valid_pixels_only():
    align = DistributionAlignment(torch.tensor([1.0, 3.0]), momentum=0.5)
    assert align.running.tolist() == pytest.approx([0.25, 0.75])
    probs = probs_map([1.0, 0.0], [0.0, 1.0], [0.0, 1.0])
    valid = torch.tensor([[[True, True, False]]])
    align.update(probs, valid)  # batch marginal over the two valid pixels: (0.5, 0.5)
    assert align.running.tolist() == pytest.approx([0.375, 0.625])


def test_no_change_while_predictions_match_the_labelled_shares_and_state_round_trips():
    align = DistributionAlignment(torch.tensor([2, 6, 0]))
    probs = probs_map([0.2, 0.5, 0.3], [0.1, 0.1, 0.8])
    # running starts at the target: the ratio is 1 on the labelled classes, 0 on the unlabelled one
    expected = probs * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(align(probs), expected / expected.sum(1, keepdim=True))
    align.update(probs, torch.ones(1, 1, 2, dtype=torch.bool))
    restored = DistributionAlignment(torch.tensor([2, 6, 0]))
    restored.load_state_dict(align.state_dict())
    assert torch.equal(restored.running, align.running)
    assert torch.allclose(restored(probs), align(probs))


def test_without_labelled_pixels_alignment_changes_nothing():
    align = DistributionAlignment(torch.zeros(3))
    probs = probs_map([0.2, 0.5, 0.3])
    align.update(probs, torch.ones(1, 1, 1, dtype=torch.bool))
    assert torch.equal(align(probs), probs)


def test_state_follows_the_probabilities_device_without_a_copy_to_the_host():
    # "meta" stands in for a GPU: copying a meta tensor to the host raises, as a GPU copy would sync
    align = DistributionAlignment(torch.tensor([1.0, 3.0]))
    probs = torch.full((1, 2, 1, 3), 0.5, device="meta")
    align.update(probs, torch.ones(1, 1, 3, dtype=torch.bool, device="meta"))
    assert align.running.device.type == "meta" and align(probs).device.type == "meta"
