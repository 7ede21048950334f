import numpy as np
import pytest

from conftest import label_map, label_state, region_by_id
from s4al.active.ledger import Ledger, LedgerError
from s4al.active.oracle import Annotator, GroundTruthOracle

SIZES = {"a": (70, 100), "b": (40, 50)}


def ground_truth(image_id: str) -> np.ndarray:
    h, w = SIZES[image_id]
    label = (np.arange(h * w).reshape(h, w) % 11).astype(np.uint8)
    label[:5] = 255  # void band at the top, counted as labelling information
    return label


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as opened:
        opened.register_images([(i, h, w) for i, (h, w) in SIZES.items()], initial=set())
        yield opened


def test_oracle_reveals_ground_truth_inside_each_box_void_included(ledger):
    calls = []

    def label_of(image_id):
        calls.append(image_id)
        return ground_truth(image_id)

    oracle: Annotator = GroundTruthOracle(label_of)
    ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0), ("b", (30, 30, 40, 50), "entropy", 0.9)])
    ledger.ask(0, [("a", (60, 90, 70, 100), "entropy", 0.8)])
    assert oracle.answer(ledger, ledger.asked()) == 3

    assert sorted(calls) == ["a", "b"]  # each label is loaded once
    assert ledger.asked() == []
    assert {r.answered_by for r in ledger.answered()} == {"oracle"}
    labels = label_map(ledger, "a")
    assert np.array_equal(labels[0:30, 0:30], ground_truth("a")[0:30, 0:30])
    assert (labels[0:5, 0:30] == 255).all()
    assert np.array_equal(labels[60:70, 90:100], ground_truth("a")[60:70, 90:100])
    assert (labels[30:60] == 255).all()
    assert np.array_equal(label_map(ledger, "b")[30:40, 30:50], ground_truth("b")[30:40, 30:50])
    assert label_state(ledger).labelled_pixels == 900 + 100 + 200


def test_oracle_refuses_a_label_of_the_wrong_size_and_writes_nothing(ledger):
    ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0)])
    oracle = GroundTruthOracle(lambda image_id: np.zeros((71, 100), np.uint8))
    with pytest.raises(ValueError, match="registered"):
        oracle.answer(ledger, ledger.asked())
    assert len(ledger.asked()) == 1


def test_oracle_answers_go_through_ledger_validation(ledger):
    (region_id,) = ledger.ask(0, [("b", (0, 0, 10, 10), "entropy", 1.0)])
    oracle = GroundTruthOracle(ground_truth)
    oracle.answer(ledger, ledger.asked())
    with pytest.raises(LedgerError, match="already answered"):
        oracle.answer(ledger, [region_by_id(ledger, region_id)])
