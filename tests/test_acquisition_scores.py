import math

import pytest
import torch

from s4al.acquisition.scores import (
    SCORE_FUNCTIONS,
    entropy,
    least_confidence,
    margin,
    pixel_scores,
    random_scores,
)


def probs_map(*pixels: list[float]) -> torch.Tensor:
    """(1, C, 1, P) probabilities from P per-pixel class distributions."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, len(pixels[0]), 1, len(pixels))


UNIFORM4 = [0.25, 0.25, 0.25, 0.25]
ONE_HOT = [0.0, 1.0, 0.0, 0.0]
SKEWED = [0.5, 0.3, 0.2, 0.0]


@pytest.mark.parametrize("score, expected", [
    (entropy, [math.log(4), 0.0, -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))]),
    (least_confidence, [0.75, 0.0, 0.5]),
    (margin, [1.0, 0.0, 0.8]),
])
def test_hand_values(score, expected):
    scores = score(probs_map(UNIFORM4, ONE_HOT, SKEWED))
    assert scores.shape == (1, 1, 3)
    assert scores.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_entropy_has_no_nan_when_probabilities_underflow():
    probs = torch.softmax(torch.tensor([0.0, 1e4, -1e4]), dim=0).reshape(1, 3, 1, 1)
    assert (probs == 0).any()
    assert entropy(probs).item() == 0.0


def test_random_scores_are_seeded_uniform():
    first = random_scores((3, 4), 1, torch.Generator().manual_seed(7))
    second = random_scores((3, 4), 1, torch.Generator().manual_seed(7))
    assert first.shape == (3, 4)
    assert torch.equal(first, second)
    assert 0.0 <= first.min() and first.max() < 1.0
    assert first.unique().numel() == 12


def test_random_scores_draw_once_per_cell_edge_cells_included():
    """A 5x7 map in 3x3 cells is a 2x3 grid whose last row and column are cut short."""
    scores = random_scores((5, 7), 3, torch.Generator().manual_seed(7))
    assert scores.shape == (5, 7)
    blocks = [scores[y0:y1, x0:x1] for y0, y1 in ((0, 3), (3, 5)) for x0, x1 in ((0, 3), (3, 6), (6, 7))]
    assert all((block == block[0, 0]).all() for block in blocks)
    assert len({block[0, 0].item() for block in blocks}) == 6


def test_registry_and_dispatch():
    assert set(SCORE_FUNCTIONS) >= {"entropy", "least_confidence", "margin"}  # and any score a user adds
    probs = probs_map(UNIFORM4, SKEWED)
    assert torch.equal(pixel_scores("margin", probs), margin(probs))
    for name, score in SCORE_FUNCTIONS.items():  # each: one finite score per pixel
        scores = pixel_scores(name, probs)
        assert scores.shape == (probs.shape[0], *probs.shape[2:]) and torch.isfinite(scores).all(), name
    with pytest.raises(ValueError, match="unknown acquisition metric"):
        pixel_scores("bald", probs)


def test_a_registered_score_of_the_wrong_shape_is_refused_naming_it(monkeypatch):
    monkeypatch.setitem(SCORE_FUNCTIONS, "per_class", lambda probs: -probs * probs.log())  # the sum over classes forgotten
    probs = probs_map(UNIFORM4, SKEWED)
    n, c, h, w = probs.shape
    with pytest.raises(ValueError, match=rf"^acquisition metric 'per_class' gave scores of shape \({n}, {c}, {h}, {w}\) for "
                                         rf"probabilities of shape \({n}, {c}, {h}, {w}\): a score function returns "
                                         rf"\(N, H, W\) = \({n}, {h}, {w}\)$"):
        pixel_scores("per_class", probs)


def test_rejects_non_nchw_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        entropy(torch.ones(4, 2, 2))
