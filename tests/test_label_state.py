"""LabelState (s4al/active/label_state.py): who is labelled, by dataset index, and how many pixels,
on a hand-computed ledger."""

import numpy as np
import pytest

from s4al.active.label_state import LabelState
from s4al.active.ledger import Ledger

# Dataset indexes in another order than the ledger registers the images: the state speaks in indexes.
INDEX_OF = {"init": 3, "a": 0, "b": 2, "c": 1}
OVERLAPPING = [(0, 0, 30, 30), (15, 15, 45, 45), (0, 0, 30, 31)]  # in 'a'
WAITING, SKIPPED = (0, 0, 10, 10), (10, 10, 20, 20)  # in 'c'


@pytest.fixture
def state(tmp_path):
    """'init' (60x60) labelled from the start, 'b' (40x50) bought whole, three overlapping boxes
    answered in 'a' (70x100), one box waiting and one skipped in 'c' (30x30)."""
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.register_images([("init", 60, 60), ("a", 70, 100), ("b", 40, 50), ("c", 30, 30)], initial={"init"})
        answered = ledger.ask(0, [("a", box, "entropy", 1.0) for box in OVERLAPPING])
        _, skipped = ledger.ask(0, [("c", WAITING, "entropy", 0.5), ("c", SKIPPED, "entropy", 0.4)])
        patches = [np.ones((y1 - y0, x1 - x0), np.uint8) for y0, x0, y1, x1 in OVERLAPPING]
        ledger.answer_many(list(zip(answered, patches)), by="oracle")
        ledger.skip([skipped], by="alice")
        ledger.acquire_images(0, ["b"], "entropy", [0.9])
        yield LabelState.read(ledger, INDEX_OF)


def test_images_are_whole_or_in_the_pool_by_dataset_index(state):
    assert state.sizes == {3: (60, 60), 0: (70, 100), 2: (40, 50), 1: (30, 30)}
    assert (state.whole, state.pool, state.initial_pool) == ([2, 3], [0, 1], [0, 1, 2])
    assert state.asked == {0: OVERLAPPING, 1: [WAITING, SKIPPED]}  # every box asked, whatever became of it
    assert {index: [r.box for r in regions] for index, regions in state.answered.items()} == {0: OVERLAPPING}


def test_labelled_pixels_count_whole_images_whole_overlaps_once_and_waiting_or_skipped_boxes_not_at_all(state):
    # 'a': 900 + 900 - 225 (the first two overlap in a 15x15 square) + 15 (the third box adds only
    # column 30 of rows 0-14; rows 15-29 of it lie in the second box) = 1590
    assert state.labelled_pixels == 60 * 60 + 1590 + 40 * 50
    assert state.labelled_fraction == pytest.approx((3600 + 1590 + 2000) / (3600 + 7000 + 2000 + 900))
