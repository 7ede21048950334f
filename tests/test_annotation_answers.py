"""Importing answers into the ledger: what is accepted, and that every refused file leaves the run
folder byte-for-byte unchanged."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from s4al.active.ledger import Ledger
from s4al.annotation.answers import import_answers
from s4al.annotation.masks import AnswerError
from test_annotation_label_studio import exported_task

CLASSES = ["sky", "road", "car"]
H, W = 20, 30
A1, A2, B1 = (0, 0, 10, 10), (10, 20, 20, 30), (0, 10, 10, 20)  # the asked boxes: two in 'a', one in 'b'


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    with Ledger(run / "ledger.sqlite") as ledger:
        ledger.register_images([("a", H, W), ("b", H, W), ("c", H, W)], initial={"c"})
        ledger.set_meta("classes", CLASSES)
        ledger.ask(0, [("a", A1, "entropy", 1.0), ("a", A2, "entropy", 0.5), ("b", B1, "entropy", 0.7)])
    return run


def truth(image_id: str) -> np.ndarray:
    labels = (np.arange(H * W).reshape(H, W) % 3).astype(np.uint8)
    labels[0, :] = 255  # void
    return labels if image_id == "a" else labels[::-1].copy()


def crop(labels, box):
    y0, x0, y1, x1 = box
    return labels[y0:y1, x0:x1]


def written(path, text):
    path.write_text(text)
    return path


def write_export(path, *tasks):
    return written(path, json.dumps(list(tasks)))


def task_of(task_id, image_id, labels, region_ids):
    return exported_task(task_id, {"image": "data:...", "image_id": image_id, "region_ids": region_ids}, labels,
                         names=CLASSES)


def snapshot(run):
    """Bytes of the ledger and the listing of labels/: what a refused import must not change
    (a read-only SQLite reader may leave an empty -wal and a -shm file beside the ledger)."""
    ledger = hashlib.sha256((run / "ledger.sqlite").read_bytes()).hexdigest()
    labels = sorted(p.name for p in (run / "labels").iterdir()) if (run / "labels").exists() else None
    return ledger, labels


def test_label_studio_answers_store_the_painting_inside_each_asked_region(run_dir, tmp_path):
    export = write_export(tmp_path / "export.json",
                          task_of(1, "a", truth("a"), [1, 2]), task_of(2, "b", truth("b"), [3]))
    report = import_answers(run_dir, export)

    assert report.by == "label-studio" and sorted(report.answered) == [1, 2, 3] and report.still_asked == 0
    assert report.void_pixels == 10 + 0 + 0  # the void top row crosses A1 only
    assert report.ignored_pixels == {"a": H * W - W - 200 + 10, "b": H * W - W - 100 + 0}
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert {r.answered_by for r in ledger.answered()} == {"label-studio"}
        for image_id, box in (("a", A1), ("a", A2), ("b", B1)):
            assert np.array_equal(crop(ledger.label_map(image_id), box), crop(truth(image_id), box))


def test_a_partial_answer_leaves_the_other_regions_asked(run_dir, tmp_path):
    labels = np.full((H, W), 255, np.uint8)
    labels[12, 25] = 2  # one painted pixel answers A2; A1 is untouched
    report = import_answers(run_dir, write_export(tmp_path / "e.json", task_of(1, "a", labels, [1, 2])))
    assert report.answered == [2] and report.still_asked == 2 and report.void_pixels == 99
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.region_id for r in ledger.asked()] == [1, 3]
        patch = ledger.patch(ledger.region(2))
        assert patch[2, 5] == 2 and (patch == 255).sum() == 99


def test_a_task_answers_only_the_regions_it_lists(run_dir, tmp_path):
    report = import_answers(run_dir, write_export(tmp_path / "e.json", task_of(1, "a", truth("a"), [2])))
    assert report.answered == [2] and report.still_asked == 2
    assert report.ignored_pixels == {"a": H * W - W - 100}  # A1's painted pixels are ignored too


def test_a_png_folder_answers_every_asked_region_of_its_images(run_dir, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(truth("b")).save(folder / "b.png")
    (folder / "notes.txt").write_text("not a mask")
    report = import_answers(run_dir, folder)
    assert report.by == "png-folder" and report.answered == [3] and report.still_asked == 2
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert np.array_equal(ledger.patch(ledger.region(3)), crop(truth("b"), B1))
        assert ledger.region(3).answered_by == "png-folder"


def test_importing_the_same_export_again_has_nothing_left_to_answer(run_dir, tmp_path):
    export = write_export(tmp_path / "e.json", task_of(1, "b", truth("b"), [3]))
    import_answers(run_dir, export)
    before = snapshot(run_dir)
    with pytest.raises(AnswerError, match="nothing to answer"):
        import_answers(run_dir, export)
    assert snapshot(run_dir) == before


def png_folder(tmp, name=None, array=None):
    folder = tmp / "masks"
    folder.mkdir()
    if name:
        Image.fromarray(array).save(folder / name)
    return folder


def export(tmp, *tasks):
    return write_export(tmp / "e.json", *tasks)


def painted_outside_the_asked_regions():
    labels = np.full((H, W), 255, np.uint8)
    labels[15:, :10] = 1
    return labels


UNKNOWN_CLASS_ID = np.where(truth("a") == 2, 5, truth("a")).astype(np.uint8)

REFUSED_EXPORTS = {
    "unknown image": (
        lambda tmp: export(tmp, task_of(5, "zebra", truth("a"), [1])),
        r"e.json: task 5 \(image 'zebra'\): image 'zebra' is not in this run"),
    "unknown class": (
        lambda tmp: export(tmp, exported_task(5, {"image_id": "a", "region_ids": [1]}, truth("a"),
                                              names=["sky", "road", "bus"])),
        r"e.json: task 5 \(image 'a'\): unknown class 'bus'"),
    "wrong size": (
        lambda tmp: export(tmp, task_of(5, "a", np.ones((H, W + 2), np.uint8), [1])),
        r"task 5 \(image 'a'\): mask is 20x32, image 'a' is 20x30"),
    "region of another image": (
        lambda tmp: export(tmp, task_of(5, "a", truth("a"), [1, 3])),
        r"task 5 \(image 'a'\): region 3 was never asked for image 'a'"),
    "region never asked": (
        lambda tmp: export(tmp, task_of(5, "a", truth("a"), [99])),
        r"task 5 \(image 'a'\): region 99 was never asked"),
    "painting only outside the asked regions": (
        lambda tmp: export(tmp, task_of(5, "a", painted_outside_the_asked_regions(), [1, 2])),
        "nothing to answer"),
    "one bad task among good ones": (
        lambda tmp: export(tmp, task_of(1, "b", truth("b"), [3]), task_of(2, "zebra", truth("a"), [1])),
        r"task 2 \(image 'zebra'\): image 'zebra' is not in this run"),
    "the same image twice": (
        lambda tmp: export(tmp, task_of(1, "b", truth("b"), [3]), task_of(2, "b", truth("b"), [3])),
        r"task 2 \(image 'b'\): image 'b' is answered twice"),
    "corrupt JSON": (
        lambda tmp: written(tmp / "e.json", '[{"id": 1, "data": {"image_id": "a"'),
        r"e.json: not a readable JSON file"),
    "no such file": (lambda tmp: tmp / "missing.json", "missing.json: no such file or folder"),
    "PNG of an unknown image": (
        lambda tmp: png_folder(tmp, "zebra.png", truth("a")), r"zebra.png: image 'zebra' is not in this run"),
    "PNG with an unknown class id": (
        lambda tmp: png_folder(tmp, "a.png", UNKNOWN_CLASS_ID), r"a.png: unknown class ids \[5\]"),
    "PNG of the wrong size": (
        lambda tmp: png_folder(tmp, "a.png", np.ones((H + 1, W), np.uint8)),
        r"a.png: mask is 21x30, image 'a' is 20x30"),
    "colour PNG": (
        lambda tmp: png_folder(tmp, "a.png", np.zeros((H, W, 3), np.uint8)),
        r"a.png: a label must be a single-channel"),
    "empty folder": (png_folder, "no .png masks"),
}


@pytest.mark.parametrize("case", REFUSED_EXPORTS)
def test_a_refused_file_changes_nothing_and_says_what_and_where(run_dir, tmp_path, case):
    make, message = REFUSED_EXPORTS[case]
    answers = make(tmp_path)
    before = snapshot(run_dir)
    with pytest.raises(AnswerError, match=message):
        import_answers(run_dir, answers)
    assert snapshot(run_dir) == before
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        assert len(ledger.asked()) == 3


def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path):
    with pytest.raises(AnswerError, match="not a run folder"):
        import_answers(tmp_path / "nowhere", tmp_path)
    assert not (tmp_path / "nowhere").exists()
