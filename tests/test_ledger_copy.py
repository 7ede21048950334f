"""The copy of the ledger the other ranks of a torchrun job read: the same answers as the file."""

import pickle

import numpy as np

from s4al.active.ledger import Ledger
from s4al.active.ledger_copy import copy_of
from s4al.active.phases import CyclePhases


def test_a_copy_reads_as_the_ledger_and_phases_it_was_made_from_after_a_pickle(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        ledger.register_images([("a", 20, 30), ("b", 20, 30), ("c", 20, 30)], initial={"c"})
        first, second, third = ledger.ask(0, [("a", (0, 0, 10, 10), "entropy", 0.9),
                                              ("a", (10, 0, 20, 10), "entropy", 0.5),
                                              ("b", (0, 10, 10, 20), "entropy", 0.7)])
        ledger.answer(first, np.full((10, 10), 2, np.uint8), by="test")
        ledger.skip([third], by="test")
        for phase in ("train", "acquire", "answer", "done"):
            phases.set_phase(0, phase)
        phases.set_phase(1, "train")
        ledger_copy, phases_copy = pickle.loads(pickle.dumps(copy_of(ledger, phases)))

        assert ledger_copy.images() == ledger.images()
        for cycle in (None, 0, 1):
            for state in (None, "asked", "answered", "skipped"):
                assert ledger_copy.regions(cycle, state) == ledger.regions(cycle, state)
        assert [r.region_id for r in ledger_copy.asked()] == [second]
        assert [r.region_id for r in ledger_copy.answered(0)] == [first]
        assert [r.region_id for r in ledger_copy.skipped()] == [third]
        assert (ledger_copy.patch(ledger_copy.answered()[0]) == 2).all()
        assert [phases_copy.phase(c) for c in (0, 1, 2)] == ["done", "train", None]
        assert phases_copy.last_cycle() == 1


def test_a_copy_of_a_ledger_without_phases_has_no_last_cycle(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        ledger.register_images([("a", 4, 4)], initial={"a"})
        ledger_copy, phases_copy = copy_of(ledger, phases)
    assert phases_copy.last_cycle() is None and phases_copy.phase(0) is None
    assert [r.image_id for r in ledger_copy.images()] == ["a"] and ledger_copy.regions() == []
