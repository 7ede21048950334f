import pytest
import torch

from s4al.acquisition.coreset import k_center_greedy, pooled_features


def on_a_line(*xs: float) -> torch.Tensor:
    return torch.tensor(xs).unsqueeze(1)


def mask(*flags: int) -> torch.Tensor:
    return torch.tensor(flags, dtype=torch.bool)


def test_picks_the_farthest_point_first_then_updates_distances():
    features = on_a_line(0, 1, 2, 10)
    # 10 is farthest from the labelled 0; then 2 (2 from its nearest centre) beats 1 (1 from it).
    assert k_center_greedy(features, mask(1, 0, 0, 0), 2) == [3, 2]
    assert k_center_greedy(features, mask(1, 0, 0, 0), 3) == [3, 2, 1]


def test_without_labelled_points_it_starts_at_the_point_nearest_the_mean():
    features = on_a_line(0, 1, 2, 3, 10)  # mean 3.2
    assert k_center_greedy(features, mask(0, 0, 0, 0, 0), 3) == [3, 4, 0]


def test_ties_go_to_the_lowest_index():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert k_center_greedy(features, mask(1, 0, 0, 0), 1) == [1]


def test_budget_beyond_the_pool_returns_every_unlabelled_point_once():
    features = on_a_line(0, 5, 1, 7)
    picks = k_center_greedy(features, mask(0, 1, 0, 0), 10)
    assert sorted(picks) == [0, 2, 3]
    assert k_center_greedy(features, mask(1, 1, 1, 1), 2) == []


def test_pooled_features_is_a_global_average():
    output = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    pooled = pooled_features(output)
    assert pooled.shape == (2, 3)
    assert pooled[0].tolist() == pytest.approx([1.5, 5.5, 9.5])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="labelled_mask"):
        k_center_greedy(on_a_line(0, 1), mask(0, 0, 0), 1)
