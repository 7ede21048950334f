import numpy as np
import pytest

from s4al.seeding import derive_seed
from s4al.train.sampling import StepBatches, Stream


def test_stream_is_back_to_back_permutations():
    stream = Stream([5, 6, 7], 1, "x")
    first, second = [stream.at(p) for p in range(3)], [stream.at(p) for p in range(3, 6)]
    assert sorted(first) == sorted(second) == [5, 6, 7]


def test_stream_shuffles_each_pass_anew_and_by_its_seed():
    def passes(*seed_parts, count=5):
        stream = Stream(range(10), *seed_parts)
        return [tuple(stream.at(p) for p in range(k * 10, (k + 1) * 10)) for k in range(count)]

    orders = passes(0, "x")
    assert len(set(orders)) == 5 and tuple(range(10)) not in orders
    assert passes(1, "x") != orders and passes(0, "y") != orders
    assert passes(0, "x") == orders  # the same seed, the same order, in any process


def test_stream_puts_every_index_first_about_equally_often():
    stream = Stream(range(4), 0, "x")
    firsts = np.bincount([stream.at(4 * k) for k in range(400)], minlength=4)
    assert firsts.sum() == 400 and firsts.min() >= 70 and firsts.max() <= 130  # 100 each expected


def test_a_resumed_replay_buffer_holds_nothing_drawn_before_first_step():
    """The pool stream starts at the first semi-supervised step (first_step); a resume rebuilds the
    buffer from the steps since then only, as the uninterrupted run saw them."""
    def batches(start, first_step):
        return list(StepBatches(Stream(range(50), 3, "pool"), 2, start, 8, name="unlabelled", first_step=first_step,
                                replay_size=4, replay_on=lambda s: True))

    uninterrupted = batches(4, first_step=4)
    assert "replay" not in uninterrupted[0]  # nothing seen yet at the first step
    assert batches(5, first_step=4) == uninterrupted[1:]
    assert batches(5, first_step=0) != uninterrupted[1:]  # step 3's images would be replayed too


@pytest.mark.parametrize("replay_size, batch_size", [(4, 2), (5, 2), (50, 4)])  # CamVid's: 50 of batches of 4
def test_batches_resume_exactly(replay_size, batch_size):
    """The buffer a resume rebuilds holds the last replay_size images drawn: ceil(replay_size / batch_size)
    steps back, a part of the first of them too where the batch does not divide it."""
    def batches(start):
        return list(StepBatches(Stream(range(40), 3, "pool"), batch_size, start, 30, name="unlabelled",
                                replay_size=replay_size, replay_on=lambda s: s >= 2))

    full = batches(0)
    for start in (5, 20):
        assert full[start:] == batches(start)


def test_replay_draws_from_recent_history_only():
    stream = Stream(range(100), 0, "pool")
    out = list(StepBatches(stream, 2, 0, 10, name="unlabelled", replay_size=4, replay_on=lambda s: True))
    assert list(out[0]) == ["unlabelled"]  # empty buffer at step 0: no replay
    for step in range(1, 10):
        recent = {stream.at(p) for p in range(max(0, step * 2 - 4), step * 2)}
        assert list(out[step]) == ["unlabelled", "replay"] and len(out[step]["replay"]) == 2
        assert [i for i, _ in out[step]["unlabelled"]] == [stream.at(p) for p in (step * 2, step * 2 + 1)]
        assert {i for i, _ in out[step]["replay"]} <= recent


def test_batches_are_named_and_replay_only_when_switched_on():
    stream = Stream(range(10), 0, "labelled")
    out = list(StepBatches(stream, 3, 0, 4, name="labelled"))
    assert all(list(draw) == ["labelled"] and len(draw["labelled"]) == 3 for draw in out)
    switched = list(StepBatches(Stream(range(10), 0, "pool"), 2, 0, 4, name="unlabelled", replay_size=4,
                                replay_on=lambda s: s == 2))
    assert [sorted(draw) for draw in switched] == [["unlabelled"], ["unlabelled"], ["replay", "unlabelled"],
                                                   ["unlabelled"]]


def test_ranks_read_their_own_slice_of_each_steps_positions():
    stream = Stream(range(20), 0, "pool")
    ranks = [list(StepBatches(stream, 2, 0, 3, name="unlabelled", rank=r, world_size=2)) for r in (0, 1)]
    for step in range(3):
        for rank in (0, 1):
            first = (step * 2 + rank) * 2
            assert [i for i, _ in ranks[rank][step]["unlabelled"]] == [stream.at(first), stream.at(first + 1)]
            assert [s for _, s in ranks[rank][step]["unlabelled"]] == [
                derive_seed(0, "pool", "aug", first), derive_seed(0, "pool", "aug", first + 1)]


def test_derive_seed_stable_and_distinct():
    assert derive_seed(1, "a", 2) == 3044396827124029981  # pinned: every run's splits and batches hang on it
    assert derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
