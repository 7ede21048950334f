import math

import pytest
import torch

from s4al.config import SSLConfig
from s4al.ssl.alignment import ArgmaxAlignment, ProbabilityAlignment


def probs_map(*pixels):
    """(1, C, 1, P) probabilities from P per-pixel class distributions."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, len(pixels[0]), 1, len(pixels))


def test_alignment_by_hand_flips_an_under_predicted_class():
    align = ProbabilityAlignment(torch.tensor([50, 50]), momentum=0.0)  # target (0.5, 0.5)
    align.update(probs_map([0.8, 0.2]), torch.ones(1, 1, 1, dtype=torch.bool))  # running := (0.8, 0.2)
    aligned = align(probs_map([0.6, 0.4]))
    # (0.6 * 0.5/0.8, 0.4 * 0.5/0.2) = (0.375, 1.0), normalised
    assert aligned.flatten().tolist() == pytest.approx([0.375 / 1.375, 1.0 / 1.375])


def test_running_marginal_is_an_ema_over_valid_pixels_only():
    align = ProbabilityAlignment(torch.tensor([1.0, 3.0]), momentum=0.5)
    assert align.running.tolist() == pytest.approx([0.25, 0.75])
    probs = probs_map([1.0, 0.0], [0.0, 1.0], [0.0, 1.0])
    valid = torch.tensor([[[True, True, False]]])
    align.update(probs, valid)  # batch marginal over the two valid pixels: (0.5, 0.5)
    assert align.running.tolist() == pytest.approx([0.375, 0.625])


def test_shares_over_ranks_weigh_each_rank_by_its_valid_pixels():
    """Rank A: one valid pixel of class 0; rank B (simulated by `reduce`): three of class 1. The
    pool's share of class 0 is 1/4, not the mean of the ranks' shares (1/2)."""
    rank_b = torch.tensor([0.0, 3.0, 3.0], dtype=torch.float64)  # class masses, then the valid-pixel count
    align = ProbabilityAlignment(torch.tensor([1.0, 1.0]), momentum=0.0)
    align.update(probs_map([1.0, 0.0]), torch.ones(1, 1, 1, dtype=torch.bool), reduce=lambda t: (t + rank_b) / 2)
    assert align.running.tolist() == pytest.approx([0.25, 0.75])


def test_no_change_while_predictions_match_the_labelled_shares_and_state_round_trips():
    align = ProbabilityAlignment(torch.tensor([2, 6, 0]))
    probs = probs_map([0.2, 0.5, 0.3], [0.1, 0.1, 0.8])
    # running starts at the target: the ratio is 1 on the labelled classes, 0 on the unlabelled one
    expected = probs * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(align(probs), expected / expected.sum(1, keepdim=True))
    align.update(probs, torch.ones(1, 1, 2, dtype=torch.bool))
    restored = ProbabilityAlignment(torch.tensor([2, 6, 0]))
    restored.load_state_dict(align.state_dict())
    assert torch.equal(restored.running, align.running)
    assert torch.allclose(restored(probs), align(probs))


def test_without_labelled_pixels_alignment_changes_nothing():
    align = ProbabilityAlignment(torch.zeros(3))
    probs = probs_map([0.2, 0.5, 0.3])
    align.update(probs, torch.ones(1, 1, 1, dtype=torch.bool))
    assert torch.equal(align(probs), probs)


def test_state_follows_the_probabilities_device_without_a_copy_to_the_host():
    # "meta" stands in for a GPU: copying a meta tensor to the host raises, as a GPU copy would sync
    align = ProbabilityAlignment(torch.tensor([1.0, 3.0]))
    probs = torch.full((1, 2, 1, 3), 0.5, device="meta")
    align.update(probs, torch.ones(1, 1, 3, dtype=torch.bool, device="meta"))
    assert align.running.device.type == "meta" and align(probs).device.type == "meta"


def test_argmax_alignment_by_hand_raises_the_class_that_wins_no_pixel():
    align = ArgmaxAlignment(torch.tensor([50, 50]), momentum=0.0, rate=1.0, max_step=1.0)
    align.update(probs_map([0.6, 0.4], [0.7, 0.3]), torch.ones(1, 1, 2, dtype=torch.bool))
    # argmax shares (1, 0): bias += (log(0.5 / 1), log(0.5 / 1e-6) clipped to 1)
    assert align.bias.tolist() == pytest.approx([math.log(0.5), 1.0])
    aligned = align(probs_map([0.6, 0.4]))
    low, high = 0.6 * 0.5, 0.4 * math.e
    assert aligned.flatten().tolist() == pytest.approx([low / (low + high), high / (low + high)])


@pytest.mark.parametrize("max_step, bias", [(1.0, [-1.0, 1.0]), (3.0, [math.log(0.1), 3.0])])
def test_argmax_alignment_clips_each_step_both_ways(max_step, bias):
    """Target (0.1, 0.9), class 0 wins every pixel: running (1, 0), so the steps are log(0.1 / 1) =
    -2.303 and log(0.9 / 1e-6) = 13.71, each clipped to +-max_step."""
    align = ArgmaxAlignment(torch.tensor([10, 90]), momentum=0.0, rate=1.0, max_step=max_step)
    align.update(probs_map([0.6, 0.4], [0.9, 0.1]), torch.ones(1, 1, 2, dtype=torch.bool))
    assert align.running.tolist() == [1.0, 0.0]
    assert align.bias.tolist() == pytest.approx(bias)


def test_argmax_alignment_converges_to_the_labelled_argmax_shares():
    # class 1 never wins a pixel (its probability runs from 0.01 to 0.49); the labelled shares say 30%
    p1 = torch.linspace(0.01, 0.49, 100, dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).view(1, 2, 1, 100)
    valid = torch.ones(1, 1, 100, dtype=torch.bool)
    align = ArgmaxAlignment(torch.tensor([70, 30]), momentum=0.9, rate=0.05)
    for _ in range(2000):
        align.update(probs, valid)
    share = (align(probs).argmax(1) == 1).double().mean().item()
    assert share == pytest.approx(0.3, abs=0.02)
    restored = ArgmaxAlignment(torch.tensor([70, 30]), momentum=0.9)
    restored.load_state_dict(align.state_dict())
    assert torch.equal(restored.bias, align.bias) and torch.equal(restored.running, align.running)


def test_argmax_alignment_gives_unlabelled_classes_no_probability():
    align = ArgmaxAlignment(torch.tensor([2, 6, 0]), momentum=0.5)
    probs = probs_map([0.2, 0.3, 0.5])
    align.update(probs, torch.ones(1, 1, 1, dtype=torch.bool))
    assert align.bias[2] == 0 and align(probs)[0, 2].item() == 0


def test_configs_from_before_argmax_alignment_read_their_booleans():
    assert SSLConfig(distribution_alignment=True).distribution_alignment == "probabilities"
    assert SSLConfig(distribution_alignment=False).distribution_alignment == "off"
    assert SSLConfig(distribution_alignment="argmax").distribution_alignment == "argmax"


@pytest.mark.parametrize("aligner", [ProbabilityAlignment, ArgmaxAlignment])
def test_estimated_target_is_the_geometric_mean_of_labelled_and_predicted_shares_then_fixed(aligner):
    align = aligner(torch.tensor([3, 1]), momentum=0.5, estimate_steps=2)
    valid = torch.tensor([[[True, True, False]]])
    first = probs_map([0.5, 0.5], [0.5, 0.5], [0.0, 1.0])  # valid pixels' mean: 0.5, 0.5
    second = probs_map([0.9, 0.1], [0.7, 0.3], [0.5, 0.5])  # 0.8, 0.2
    align.update(first, valid)
    assert align.target.tolist() == [0.75, 0.25]  # the labelled shares until the estimate is done
    align.update(second, valid)
    geometric = torch.tensor([0.75 * 0.65, 0.25 * 0.35], dtype=torch.float64).sqrt()
    assert torch.allclose(align.target, geometric / geometric.sum())
    resumed = aligner(torch.tensor([3, 1]), momentum=0.5, estimate_steps=2)
    resumed.load_state_dict(align.state_dict())  # a checkpoint keeps the estimated target
    for _ in range(3):
        align.update(probs_map([0.0, 1.0], [0.0, 1.0], [0.0, 1.0]), valid)
    assert torch.allclose(align.target, geometric / geometric.sum())  # later predictions do not move it
    assert torch.equal(resumed.target, geometric / geometric.sum()) and resumed.seen == 2


def test_an_estimate_cut_by_a_checkpoint_resumes_where_it_was():
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    batches = [probs_map([0.6, 0.4], [0.2, 0.8]), probs_map([0.9, 0.1], [0.5, 0.5]), probs_map([0.3, 0.7], [0.1, 0.9])]
    whole = ArgmaxAlignment(torch.tensor([1, 1]), estimate_steps=3)
    for batch in batches:
        whole.update(batch, valid)
    cut = ArgmaxAlignment(torch.tensor([1, 1]), estimate_steps=3)
    cut.update(batches[0], valid)
    resumed = ArgmaxAlignment(torch.tensor([1, 1]), estimate_steps=3)
    resumed.load_state_dict(cut.state_dict())
    for batch in batches[1:]:
        resumed.update(batch, valid)
    assert torch.equal(resumed.target, whole.target) and torch.equal(resumed.bias, whole.bias)
