from s4al.train.sampling import StepBatches, Stream, derive_seed


def test_stream_is_back_to_back_permutations():
    stream = Stream([5, 6, 7], 1, "x")
    first, second = [stream.at(p) for p in range(3)], [stream.at(p) for p in range(3, 6)]
    assert sorted(first) == sorted(second) == [5, 6, 7]


def test_batches_resume_exactly():
    def batches(start):
        return list(StepBatches(Stream(range(10), 3, "pool"), 2, start, 8, replay_size=4, replay_on=lambda s: s >= 2))

    full, resumed = batches(0), batches(5)
    assert full[5:] == resumed


def test_replay_draws_from_recent_history_only():
    stream = Stream(range(100), 0, "pool")
    out = list(StepBatches(stream, 2, 0, 10, replay_size=4, replay_on=lambda s: True))
    assert len(out[0]) == 2  # empty buffer at step 0: no replay
    for step in range(1, 10):
        recent = {stream.at(p) for p in range(max(0, step * 2 - 4), step * 2)}
        assert len(out[step]) == 4 and {i for i, _ in out[step][2:]} <= recent


def test_derive_seed_stable_and_distinct():
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    assert derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
