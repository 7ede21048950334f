import pytest
import torch

from s4al.train.sampling import ReplayBuffer


def seeded(seed: int = 3108) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_fifo_keeps_the_newest_indices():
    buffer = ReplayBuffer(3)
    buffer.add([1, 2])
    assert len(buffer) == 2
    buffer.add([3, 4])
    assert len(buffer) == 3
    assert list(buffer) == [2, 3, 4]
    buffer.add([5])
    assert list(buffer) == [3, 4, 5]


def test_sample_without_replacement_when_enough():
    buffer = ReplayBuffer(10)
    buffer.add(range(100, 110))
    first = buffer.sample(4, seeded())
    assert first == buffer.sample(4, seeded())
    assert len(first) == 4 and set(first) <= set(range(100, 110))
    # the whole buffer: every index exactly once (ten draws with replacement would repeat one)
    assert sorted(buffer.sample(10, seeded())) == list(range(100, 110))


def test_sample_is_uniform_over_the_buffer():
    buffer = ReplayBuffer(4)
    buffer.add([7, 8, 9, 10])
    generator = seeded()
    draws = [i for _ in range(400) for i in buffer.sample(1, generator)]
    for index in (7, 8, 9, 10):
        assert draws.count(index) == pytest.approx(100, abs=30)


def test_sample_with_replacement_when_fewer_than_requested():
    buffer = ReplayBuffer(50)
    buffer.add([11, 12])
    drawn = buffer.sample(4, seeded())
    assert len(drawn) == 4
    assert set(drawn) <= {11, 12}
    assert drawn == buffer.sample(4, seeded())


def test_empty_buffer_samples_nothing():
    assert ReplayBuffer(5).sample(4, seeded()) == []


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        ReplayBuffer(0)
