import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import s4al.active.ledger as ledger_module
from conftest import disk_full_at, label_map, label_state, read_rows, region_by_id
from s4al.active.ledger import LabelWriteError, Ledger, LedgerError, connect, write_transaction
from s4al.active.phases import CyclePhases

REPO = Path(__file__).resolve().parents[1]
IMAGES = [("init", 60, 60), ("a", 70, 100), ("b", 40, 50)]
INIT, A, B = 0, 1, 2  # their indexes in a label_state


def open_ledger(run_dir: Path) -> Ledger:
    ledger = Ledger(run_dir / "ledger.sqlite")
    ledger.register_images(IMAGES, initial={"init"})
    return ledger


@pytest.fixture
def ledger(tmp_path):
    with open_ledger(tmp_path) as opened:
        yield opened


def patch_of(region, fill: int) -> np.ndarray:
    h, w = region.shape
    return (np.arange(h * w).reshape(h, w) % 7 + fill).astype(np.uint8)


def dump(path: Path) -> list[str]:
    """Every table and row of the ledger file, as SQL: what a writer's refused call must not change
    (a writer's open and close change the file's header, its journal mode and change counter)."""
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return list(conn.iterdump())


def snapshot(run_dir: Path) -> dict[str, Any]:
    """The ledger's rows and every other file of a run directory, byte for byte."""
    files = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
             if p.is_file() and not p.name.startswith("ledger.sqlite")}
    return {**files, "ledger.sqlite": dump(run_dir / "ledger.sqlite")}


def names(path: Path, kind: str) -> set[str]:
    return {name for (name,) in read_rows(path, f"SELECT name FROM sqlite_master WHERE type = '{kind}'")}


def test_new_ledger_schema_and_meta(ledger):
    assert read_rows(ledger.path, "PRAGMA journal_mode") == [("delete",)]  # the file's mode, as any reader finds it
    assert ledger.get_meta("schema_version") == 4
    assert names(ledger.path, "table") == {"meta", "images", "regions"}  # the cycles table is the cycle phases' own
    ledger.set_meta("class_names", ["sky", "road"])
    ledger.set_meta("seed", 3108)
    assert ledger.get_meta("class_names") == ["sky", "road"]
    assert ledger.get_meta("seed") == 3108
    assert ledger.get_meta("missing", "default") == "default"


def test_a_writer_connection_syncs_every_commit_and_refuses_a_region_of_an_unregistered_image(ledger):
    with closing(connect(ledger.path, readonly=False)) as conn:
        pragmas = ("journal_mode", "synchronous", "foreign_keys")
        assert [conn.execute(f"PRAGMA {name}").fetchone()[0] for name in pragmas] == ["delete", 2, 1]  # 2: FULL
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), write_transaction(conn):
            conn.execute("INSERT INTO regions (image_id, cycle, y0, x0, y1, x1, metric, asked_at) "
                         "VALUES ('ghost', 0, 0, 0, 10, 10, 'entropy', 't')")
    assert ledger.regions() == []


def test_register_images_is_idempotent_and_refuses_conflicts(ledger):
    ledger.register_images(IMAGES, initial={"init"})
    assert [(r.image_id, r.height, r.width, r.initial) for r in ledger.images()] == [
        ("init", 60, 60, True),
        ("a", 70, 100, False),
        ("b", 40, 50, False),
    ]
    assert ledger.image_size("a") == (70, 100)
    with pytest.raises(LedgerError, match="registered as"):
        ledger.register_images([("a", 71, 100), ("new", 10, 10)])
    with pytest.raises(LedgerError, match="registered as"):
        ledger.register_images(IMAGES, initial={"init", "a"})
    with pytest.raises(LedgerError, match="not in the records"):
        ledger.register_images([("new", 10, 10)], initial={"ghost"})
    assert [r.image_id for r in ledger.images()] == ["init", "a", "b"]  # the refused 'new' was not added
    with pytest.raises(KeyError):
        ledger.image_size("ghost")


def test_ask_answer_round_trip(ledger):
    ids = ledger.ask(0, [("a", (60, 90, 70, 100), "entropy", 1.5), ("b", (0, 0, 30, 30), "entropy", 0.7)])
    assert len(ids) == 2
    assert [(r.image_id, r.box, r.state, r.cycle) for r in ledger.asked()] == [
        ("a", (60, 90, 70, 100), "asked", 0),
        ("b", (0, 0, 30, 30), "asked", 0),
    ]
    edge = region_by_id(ledger, ids[0])
    ledger.answer(edge.region_id, patch_of(edge, 3), by="oracle")

    answered = region_by_id(ledger, ids[0])
    assert (answered.state, answered.answered_by, answered.label_path) == (
        "answered",
        "oracle",
        "labels/region_000001.png",
    )
    assert np.array_equal(np.asarray(Image.open(ledger.run_dir / answered.label_path)), patch_of(edge, 3))
    assert np.array_equal(ledger.patch(answered), patch_of(edge, 3))
    assert [r.region_id for r in ledger.asked()] == [ids[1]]
    assert [r.region_id for r in ledger.answered(cycle=0)] == [ids[0]]
    assert ledger.answered(cycle=1) == []

    labels = label_map(ledger, "a")
    assert labels.dtype == np.uint8 and labels.shape == (70, 100)
    assert np.array_equal(labels[60:70, 90:100], patch_of(edge, 3))
    assert (labels[:60].astype(int).sum(), labels[:, :90].min()) == (255 * 60 * 100, 255)
    state = label_state(ledger)
    assert {index: [r.box for r in regions] for index, regions in state.answered.items()} == {A: [(60, 90, 70, 100)]}
    assert state.whole == [INIT] and state.asked[B] == [(0, 0, 30, 30)]  # asked is not labelled
    assert state.labelled_pixels == 3600 + 100


def test_numpy_scalars_are_stored_as_plain_numbers(ledger):
    (region_id,) = ledger.ask(np.int64(2), [("a", tuple(np.array([0, 0, 10, 10])), "margin", np.float32(0.25))])
    ledger.answer(np.int64(region_id), np.zeros((10, 10), np.int64), by="oracle")
    region = region_by_id(ledger, region_id)
    assert (region.cycle, region.box, region.score, region.state) == (2, (0, 0, 10, 10), 0.25, "answered")


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    with pytest.raises(LedgerError, match=f"{other}: not a label ledger \\(it holds no schema version\\)"):
        Ledger(other)


def test_a_ledger_of_a_newer_schema_is_refused_naming_the_file_and_both_versions(tmp_path):
    path = tmp_path / "ledger.sqlite"
    open_ledger(tmp_path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    before = dump(path)
    for readonly in (True, False):
        with pytest.raises(LedgerError) as refused:
            Ledger(path, readonly=readonly)
        assert str(refused.value) == (f"{path}: ledger schema version 5; this s4al reads schema versions 1, 2, 3 and 4 "
                                      "(a newer s4al wrote it? open it with that one)")
    assert dump(path) == before


def test_refused_ask_writes_nothing(tmp_path):
    with open_ledger(tmp_path) as ledger:
        ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0)])
    before = snapshot(tmp_path)
    refused = [
        [("b", (0, 0, 30, 30), "entropy", 1.0), ("a", (0, 0, 30, 30), "entropy", 2.0)],  # already bought
        [("b", (0, 0, 30, 30), "entropy", 1.0), ("b", (0, 0, 30, 30), "entropy", 1.0)],  # twice in one call
        [("b", (30, 30, 60, 60), "entropy", 1.0)],  # outside the 40x50 image
        [("init", (0, 0, 30, 30), "entropy", 1.0)],  # image already fully labelled
        [("ghost", (0, 0, 30, 30), "entropy", 1.0)],
        [("b", (0, 0, 30, 30), "entropy", float("nan"))],
    ]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for regions in refused:
            with pytest.raises(LedgerError, match="nothing written"):
                ledger.ask(1, regions)
        assert [r.image_id for r in ledger.regions()] == ["a"]
    assert snapshot(tmp_path) == before


def test_refused_answers_write_nothing(tmp_path):
    with open_ledger(tmp_path) as ledger:
        first, second = ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0), ("b", (0, 0, 30, 20), "margin", 0.2)])
        ledger.answer(first, np.zeros((30, 30), np.uint8), by="oracle")
    before = snapshot(tmp_path)
    good = (second, np.ones((30, 20), np.uint8))
    refused = [
        [good, (first, np.ones((30, 30), np.uint8))],  # already answered
        [good, (999, np.ones((30, 30), np.uint8))],  # never asked
        [(second, np.ones((20, 30), np.uint8))],  # transposed patch
        [(second, np.full((30, 20), 256))],  # not a uint8 value
        [(second, np.ones((30, 20), np.float32))],
        [good, good],
    ]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for answers in refused:
            with pytest.raises(LedgerError, match="nothing written"):
                ledger.answer_many(answers, by="label-studio")
        with pytest.raises(LedgerError, match="annotator"):
            ledger.answer_many([good], by="")
        assert [r.region_id for r in ledger.asked()] == [second]
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_an_answer(ledger):
    (region_id,) = ledger.ask(0, [("b", (10, 10, 20, 20), "entropy", 1.0)])
    ledger.answer(region_id, np.full((10, 10), 1, np.uint8), by="oracle")
    ledger.answer(region_id, np.full((10, 10), 2, np.uint8), by="label-studio", overwrite=True)
    assert region_by_id(ledger, region_id).answered_by == "label-studio"
    assert (label_map(ledger, "b")[10:20, 10:20] == 2).all()


def test_failure_after_the_png_write_leaves_the_region_asked(ledger, monkeypatch):
    (region_id,) = ledger.ask(0, [("a", (30, 30, 60, 60), "entropy", 1.0)])
    real_save = ledger_module._save_png

    def save_then_die(path, patch):
        real_save(path, patch)
        raise RuntimeError("killed after the PNG write")

    monkeypatch.setattr(ledger_module, "_save_png", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        ledger.answer(region_id, np.full((30, 30), 4, np.uint8), by="oracle")
    assert region_by_id(ledger, region_id).state == "asked"
    assert not (ledger.run_dir / "labels" / "region_000001.png").exists()  # no row points at it: removed
    assert label_state(ledger).labelled_pixels == 3600
    assert (label_map(ledger, "a") == 255).all()

    monkeypatch.setattr(ledger_module, "_save_png", real_save)
    ledger.answer(region_id, np.full((30, 30), 5, np.uint8), by="oracle")
    assert (label_map(ledger, "a")[30:60, 30:60] == 5).all()
    assert label_state(ledger).labelled_pixels == 3600 + 900


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from contextlib import contextmanager
    import numpy as np
    import s4al.active.ledger as ledger_module
    from s4al.active.ledger import Ledger, write_transaction

    run_dir, kill_at = sys.argv[1], sys.argv[2]

    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)

    @contextmanager
    def die_at_commit(conn):
        with write_transaction(conn):
            yield conn
            die()  # every write of the transaction made, none committed

    ledger = Ledger(os.path.join(run_dir, "ledger.sqlite"))
    if kill_at == "ask_commit":
        ledger_module.write_transaction = die_at_commit
    ids = ledger.ask(1, [("a", (0, 0, 30, 30), "entropy", 2.0), ("b", (0, 0, 30, 30), "entropy", 1.0)])
    if kill_at == "png_written":
        real_save = ledger_module._save_png
        ledger_module._save_png = lambda path, patch: (real_save(path, patch), die())
    if kill_at == "answer_commit":
        ledger_module.write_transaction = die_at_commit
    ledger.answer_many([(i, np.full((30, 30), 7, np.uint8)) for i in ids], by="oracle")
    if kill_at == "after_answer":
        die()
    """
)


@pytest.mark.parametrize(
    "kill_at, asked_after, answered_after",
    [("ask_commit", 0, 0), ("png_written", 2, 0), ("answer_commit", 2, 0), ("after_answer", 0, 2)],
)
def test_sigkill_leaves_a_consistent_ledger(tmp_path, kill_at, asked_after, answered_after):
    with open_ledger(tmp_path) as ledger, CyclePhases(ledger) as phases:
        phases.set_phase(0, "done")
        phases.set_phase(1, "acquire")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), kill_at], env=env, capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    with Ledger(tmp_path / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        assert read_rows(ledger.path, "PRAGMA integrity_check") == [("ok",)]
        assert (len(ledger.asked()), len(ledger.answered())) == (asked_after, answered_after)
        assert phases.phase(1) == "acquire"
        for region in ledger.answered():
            assert (label_map(ledger, region.image_id)[0:30, 0:30] == 7).all()
        if asked_after:
            assert {r.box for r in ledger.asked()} == {(0, 0, 30, 30)}
            ledger.answer_many([(r.region_id, np.full((30, 30), 8, np.uint8)) for r in ledger.asked()], by="oracle")
            assert (label_map(ledger, "b")[0:30, 0:30] == 8).all()
        assert label_state(ledger).labelled_pixels == 3600 + (900 + 900 if asked_after or answered_after else 0)


FOUR_BOXES = [(0, 0, 10, 10), (0, 20, 10, 30), (20, 0, 30, 10), (20, 20, 30, 30)]
OLD_TIME = "2026-01-01T10:00:00.000000+00:00"


def answered_four(ledger: Ledger) -> list[int]:
    """Four regions of image 'a', each answered all 1 by 'oracle', painted at OLD_TIME."""
    region_ids = ledger.ask(0, [("a", box, "entropy", 1.0) for box in FOUR_BOXES])
    ledger.answer_many([(i, np.full((10, 10), 1, np.uint8)) for i in region_ids], by="oracle",
                       painted_at={i: OLD_TIME for i in region_ids})
    return region_ids


def label_files(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / "labels").iterdir())


def test_a_write_failing_midway_through_corrections_leaves_every_patch_and_row_as_before(ledger, monkeypatch):
    region_ids = answered_four(ledger)
    before = snapshot(ledger.run_dir)
    disk_full_at(monkeypatch, 3)
    with pytest.raises(LabelWriteError) as refused:
        ledger.answer_many([(i, np.full((10, 10), 2, np.uint8)) for i in region_ids], by="alice", overwrite=True)
    assert str(refused.value) == (f"{ledger.run_dir / 'labels' / 'region_000003.v2.png'}: could not write the label "
                                  "patch (No space left on device); nothing was stored, every label is as it was")
    assert snapshot(ledger.run_dir) == before  # rows, and every file of labels/, byte for byte
    assert [(r.answered_by, r.painted_at) for r in ledger.answered()] == [("oracle", OLD_TIME)] * 4
    assert (label_map(ledger, "a")[0:10, 0:10] == 1).all() and (label_map(ledger, "a")[20:30, 20:30] == 1).all()


KILLED_CORRECTION = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import s4al.active.ledger as ledger_module
    from s4al.active.ledger import Ledger

    run_dir = sys.argv[1]
    real_save, saved = ledger_module._save_png, []

    def save_or_die(path, patch):
        saved.append(path)
        if len(saved) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(path, patch)

    ledger_module._save_png = save_or_die
    ledger = Ledger(os.path.join(run_dir, "ledger.sqlite"))
    ledger.answer_many([(i, np.full((10, 10), 2, np.uint8)) for i in (1, 2, 3, 4)], by="alice", overwrite=True)
    """
)


def test_a_kill_midway_through_corrections_changes_no_label_and_the_next_answer_takes_the_files_it_wrote(tmp_path):
    with open_ledger(tmp_path) as ledger:
        assert answered_four(ledger) == [1, 2, 3, 4]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", KILLED_CORRECTION, str(tmp_path)], env=env, capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    with Ledger(tmp_path / "ledger.sqlite", readonly=True) as reader:
        assert [(r.label_path, r.answered_by, r.painted_at) for r in reader.answered()] == [
            (f"labels/region_00000{i}.png", "oracle", OLD_TIME) for i in (1, 2, 3, 4)]
        assert all((reader.patch(r) == 1).all() for r in reader.answered())
    written_before_the_kill = ["region_000001.v2.png", "region_000002.v2.png"]
    assert label_files(tmp_path) == sorted([f"region_00000{i}.png" for i in (1, 2, 3, 4)] + written_before_the_kill)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.answer_many([(i, np.full((10, 10), 2, np.uint8)) for i in (1, 2, 3, 4)], by="alice", overwrite=True)
        assert all((ledger.patch(r) == 2).all() for r in ledger.answered())
        # the files the kill left hold these very answers: taken, so the ledger and labels/ are as without the kill
        assert [r.label_path for r in ledger.answered()] == [f"labels/region_00000{i}.v2.png" for i in (1, 2, 3, 4)]
    assert label_files(tmp_path) == sorted([f"region_00000{i}.png" for i in (1, 2, 3, 4)]
                                           + [f"region_00000{i}.v2.png" for i in (1, 2, 3, 4)])


def test_an_answer_is_not_written_into_a_file_of_other_content_a_kill_left_under_its_name(tmp_path):
    with open_ledger(tmp_path) as ledger:
        (region_id,) = ledger.ask(0, [("b", (10, 10, 20, 20), "entropy", 1.0)])
        (tmp_path / "labels").mkdir()
        Image.fromarray(np.full((10, 10), 3, np.uint8)).save(tmp_path / "labels" / "region_000001.png")
        ledger.answer(region_id, np.full((10, 10), 1, np.uint8), by="oracle")
        assert region_by_id(ledger, region_id).label_path == "labels/region_000001.v2.png"
        assert (label_map(ledger, "b")[10:20, 10:20] == 1).all()
    assert (np.asarray(Image.open(tmp_path / "labels" / "region_000001.png")) == 3).all()  # left as it was


def test_a_correction_goes_to_a_file_of_its_own_and_the_one_it_replaces_stays_for_a_ledger_put_back(tmp_path):
    with open_ledger(tmp_path) as ledger:
        (region_id,) = ledger.ask(0, [("b", (10, 10, 20, 20), "entropy", 1.0)])
        ledger.answer(region_id, np.full((10, 10), 1, np.uint8), by="oracle")
    backup = (tmp_path / "ledger.sqlite").read_bytes()  # a copy of the ledger as it was (closed, whole)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for fill, name in ((2, "region_000001.v2.png"), (3, "region_000001.v3.png")):
            ledger.answer(region_id, np.full((10, 10), fill, np.uint8), by="alice", overwrite=True)
            assert region_by_id(ledger, region_id).label_path == f"labels/{name}"
        assert (label_map(ledger, "b")[10:20, 10:20] == 3).all()
    assert label_files(tmp_path) == ["region_000001.png", "region_000001.v2.png", "region_000001.v3.png"]
    (tmp_path / "ledger.sqlite").write_bytes(backup)
    with Ledger(tmp_path / "ledger.sqlite") as restored:  # opened for writing, it finds its answer and removes none
        assert (label_map(restored, "b")[10:20, 10:20] == 1).all()
        restored.answer(region_id, np.full((10, 10), 4, np.uint8), by="bob", overwrite=True)
        assert region_by_id(restored, region_id).label_path == "labels/region_000001.v4.png"
    assert len(label_files(tmp_path)) == 4


def test_a_lost_answer_file_is_refused_naming_its_region_image_and_cycle_and_how_to_write_it_again(ledger):
    ledger.ask(0, [("a", (0, 0, 10, 10), "entropy", 1.0)])
    (region_id,) = ledger.ask(1, [("b", (10, 10, 20, 20), "entropy", 1.0)])
    ledger.answer(region_id, np.full((10, 10), 1, np.uint8), by="oracle")
    region = region_by_id(ledger, region_id)
    path = ledger.run_dir / "labels" / "region_000002.png"
    how = (f"import its answer again to write it anew: `s4al import {ledger.run_dir} ANSWERS`, with the masks or "
           "Label Studio export that answered it (or a folder holding the image's label as b.png)")
    path.unlink()
    with pytest.raises(LedgerError) as lost:
        ledger.patch(region)
    assert str(lost.value) == (f"{path}: the stored answer of region 2 (image 'b', cycle 1) is missing or unreadable "
                               f"(No such file or directory); {how}")
    path.write_bytes(b"\x89PNG\r\n\x1a\n, and nothing more")
    with pytest.raises(LedgerError) as unreadable:
        ledger.patch(region)
    assert str(unreadable.value).startswith(f"{path}: the stored answer of region 2 (image 'b', cycle 1) is missing "
                                            "or unreadable (")
    assert str(unreadable.value).endswith(f"); delete the damaged file, then {how}")


def test_acquire_whole_images(ledger):
    ledger.acquire_images(0, ["b"], "entropy", [0.4])
    record = {r.image_id: r for r in ledger.images()}["b"]
    assert (record.acquired_cycle, record.fully_labelled) == (0, True)
    state = label_state(ledger)
    assert (state.whole, state.pool, state.labelled_pixels) == ([INIT, B], [A], 3600 + 2000)
    with pytest.raises(LedgerError, match="already fully labelled"):
        ledger.acquire_images(1, ["a", "b"], "entropy", [0.1, 0.2])
    with pytest.raises(LedgerError, match="not registered"):
        ledger.acquire_images(1, ["ghost"], "entropy", [0.1])
    with pytest.raises(LedgerError, match="already fully labelled"):
        ledger.ask(1, [("b", (0, 0, 10, 10), "entropy", 1.0)])
    assert {r.image_id: r.acquired_cycle for r in ledger.images()}["a"] is None


def test_a_pool_image_given_its_mask_is_labelled_whole_and_its_answered_regions_no_longer_count(ledger):
    (region_id,) = ledger.ask(0, [("a", (0, 0, 10, 10), "entropy", 1.0)])
    ledger.answer(region_id, np.zeros((10, 10), np.uint8), by="oracle")
    assert label_state(ledger).labelled_pixels == 3600 + 100
    ledger.label_whole(["a"])
    state = label_state(ledger)
    assert (state.whole, state.pool, state.answered, state.labelled_pixels) == ([INIT, A], [B], {}, 3600 + 7000)
    assert [r.state for r in ledger.regions()] == ["answered"]  # the record of what was asked stays
    with pytest.raises(LedgerError, match=r"label_whole refused, nothing written: image 'a' is already fully "
                                          r"labelled; image 'ghost' is not registered"):
        ledger.label_whole(["b", "a", "ghost"])
    assert not {r.image_id: r for r in ledger.images()}["b"].fully_labelled


def test_images_joining_a_run_are_registered_labelled_and_recorded_in_one_write_or_not_at_all(ledger):
    from s4al.active.ledger import JOINED

    joined = {"before": "cycle 1 training", "labelled": ["c"], "pool": ["d"], "masked": ["a"]}
    with pytest.raises(LedgerError, match=r"label_whole refused, nothing written: image 'ghost' is not registered"):
        ledger.join_images([("c", 10, 10), ("d", 10, 10)], ["c"], ["a", "ghost"], joined)
    assert [r.image_id for r in ledger.images()] == ["init", "a", "b"] and ledger.get_meta(JOINED) is None
    assert not {r.image_id: r for r in ledger.images()}["a"].fully_labelled
    ledger.join_images([("c", 10, 10), ("d", 10, 10)], ["c"], ["a"], joined)
    ledger.join_images([], [], [], joined | {"before": "cycle 2 asking"})
    records = {r.image_id: r for r in ledger.images()}
    assert [record.fully_labelled for record in records.values()] == [True, True, False, True, False]  # init a b c d
    assert [j["before"] for j in ledger.get_meta(JOINED)] == ["cycle 1 training", "cycle 2 asking"]


def test_readonly_ledger_reads_but_cannot_write(tmp_path):
    with open_ledger(tmp_path) as ledger:
        (region_id,) = ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0)])
        ledger.answer(region_id, np.full((30, 30), 3, np.uint8), by="oracle")
        with Ledger(tmp_path / "ledger.sqlite", readonly=True) as reader:
            assert (label_map(reader, "a")[:30, :30] == 3).all()
            with pytest.raises(LedgerError, match=r"could not be written \(attempt to write a readonly database\)"):
                reader.set_meta("seed", 1)
    with pytest.raises(FileNotFoundError):
        Ledger(tmp_path / "elsewhere" / "ledger.sqlite", readonly=True)


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` made read-only for the block; the test is skipped for a user who writes into it anyway."""
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("this user writes into a read-only folder anyway (root)")
        yield
    finally:
        folder.chmod(0o755)


def write_a_finished_run(run_dir: Path) -> int:
    """A ledger with an answered region, a meta value and a done cycle, closed; the region's id."""
    with open_ledger(run_dir) as ledger, CyclePhases(ledger) as phases:
        (region_id,) = ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0)])
        ledger.answer(region_id, np.full((30, 30), 3, np.uint8), by="oracle")
        ledger.set_meta("seed", 7)
        phases.set_phase(0, "done")
    return region_id


def assert_finished_run_reads(run_dir: Path, region_id: int) -> None:
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as reader, CyclePhases(reader) as phases:
        assert [r.region_id for r in reader.answered()] == [region_id]
        assert (label_map(reader, "a")[:30, :30] == 3).all() and reader.get_meta("seed") == 7
        assert phases.phase(0) == "done"


def test_a_closed_writer_leaves_a_whole_file_that_a_reader_reads_leaving_nothing_beside_it(tmp_path):
    region_id = write_a_finished_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "ledger.sqlite"]
    assert read_rows(tmp_path / "ledger.sqlite", "PRAGMA journal_mode") == [("delete",)]
    assert_finished_run_reads(tmp_path, region_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "ledger.sqlite"]


def test_the_file_alone_holds_every_commit_while_its_writers_are_open(tmp_path):
    """A copy of ledger.sqlite alone, taken between writes of a run that is then killed (a backup,
    a file sent with a bug report, the -wal of a WAL-mode ledger deleted as a leftover), holds every
    answer."""
    ledger = open_ledger(tmp_path)
    phases = CyclePhases(ledger)
    (region_id,) = ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0)])
    ledger.answer(region_id, np.full((30, 30), 3, np.uint8), by="oracle")
    ledger.set_meta("seed", 7)
    phases.set_phase(0, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "ledger.sqlite"]  # no log beside it
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "ledger.sqlite").write_bytes(ledger.path.read_bytes())
    (copy / "labels").symlink_to(tmp_path / "labels")
    assert_finished_run_reads(copy, region_id)
    phases.close()
    ledger.close()


# A writer killed in the middle of a write: the file holds part of it, its journal the pages before.
KILLED_IN_A_WRITE = """
import os, sqlite3
conn = sqlite3.connect({path!r}, isolation_level=None)
conn.execute("PRAGMA cache_size = 2")  # changed pages spill to the file before the commit
conn.execute("BEGIN IMMEDIATE")
conn.executemany("INSERT INTO meta VALUES (?, ?)", [(f"k{{i}}", "x" * 200) for i in range(2000)])
os._exit(0)
"""


def test_a_write_a_kill_left_half_done_is_undone_as_the_ledger_is_next_read(tmp_path):
    region_id = write_a_finished_run(tmp_path)
    before = dump(tmp_path / "ledger.sqlite")
    subprocess.run([sys.executable, "-c", KILLED_IN_A_WRITE.format(path=str(tmp_path / "ledger.sqlite"))], check=True)
    assert (tmp_path / "ledger.sqlite-journal").stat().st_size > 0
    assert_finished_run_reads(tmp_path, region_id)  # a reader: as a status or a resume's first look
    assert dump(tmp_path / "ledger.sqlite") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "ledger.sqlite"]


def test_a_write_a_kill_left_half_done_on_a_read_only_folder_is_named(tmp_path):
    write_a_finished_run(tmp_path)
    subprocess.run([sys.executable, "-c", KILLED_IN_A_WRITE.format(path=str(tmp_path / "ledger.sqlite"))], check=True)
    with read_only(tmp_path), pytest.raises(LedgerError, match=r"ledger\.sqlite: holds a write that a kill left half "
                                                                r"done \(ledger\.sqlite-journal beside it, .*\), which only "
                                                                "a process that may write the folder can undo"):
        Ledger(tmp_path / "ledger.sqlite", readonly=True)


# A run of an s4al that kept the ledger in WAL mode, killed: its last commits are in the log alone.
KILLED_IN_WAL_MODE = """
import os, sqlite3
conn = sqlite3.connect({path!r}, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("INSERT OR REPLACE INTO meta VALUES ('seed', '8')")
os._exit(0)
"""


def test_a_ledger_an_older_s4al_left_in_wal_mode_takes_its_log_in_at_the_next_write(tmp_path):
    region_id = write_a_finished_run(tmp_path)
    subprocess.run([sys.executable, "-c", KILLED_IN_WAL_MODE.format(path=str(tmp_path / "ledger.sqlite"))], check=True)
    assert (tmp_path / "ledger.sqlite-wal").stat().st_size > 0
    Ledger(tmp_path / "ledger.sqlite").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "ledger.sqlite"]
    assert read_rows(tmp_path / "ledger.sqlite", "PRAGMA journal_mode") == [("delete",)]
    with Ledger(tmp_path / "ledger.sqlite", readonly=True) as reader:
        assert reader.get_meta("seed") == 8 and [r.region_id for r in reader.answered()] == [region_id]


def test_a_finished_run_on_a_read_only_folder_is_read(tmp_path):
    region_id = write_a_finished_run(tmp_path)
    (tmp_path / "ledger.sqlite").chmod(0o444)
    with read_only(tmp_path / "labels"), read_only(tmp_path):
        assert_finished_run_reads(tmp_path, region_id)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "ledger.sqlite"]


def test_a_writer_closing_while_a_reader_reads_keeps_every_write_and_does_not_wait(tmp_path):
    with open_ledger(tmp_path) as ledger, Ledger(ledger.path, readonly=True) as reader:  # ledger closes twice
        (region_id,) = ledger.ask(0, [("a", (0, 0, 30, 30), "entropy", 1.0)])
        ledger.answer(region_id, np.full((30, 30), 3, np.uint8), by="oracle")
        assert [r.region_id for r in reader.answered()] == [region_id]
        started = time.monotonic()
        ledger.close()
        assert time.monotonic() - started < 5
        assert [r.region_id for r in reader.answered()] == [region_id]
    with Ledger(tmp_path / "ledger.sqlite", readonly=True) as reader:
        assert [r.region_id for r in reader.answered()] == [region_id]
        assert (label_map(reader, "a")[:30, :30] == 3).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "ledger.sqlite"]


def test_the_answers_of_regions_after_the_ledgers_last_are_found(ledger):
    first, second = ledger.ask(0, [("a", (0, 0, 10, 10), "entropy", 1.0), ("b", (0, 0, 10, 10), "entropy", 0.9)])
    ledger.answer(second, np.ones((10, 10), np.uint8), by="oracle")
    assert ledger.answers_of_unknown_regions() == []
    for name in ("region_000003.png", "region_000003.v2.png", "region_000010.png", "notes.png", "region_x.png"):
        (ledger.labels_dir / name).write_bytes(b"")
    assert ledger.answers_of_unknown_regions() == ["labels/region_000003.png", "labels/region_000003.v2.png",
                                                   "labels/region_000010.png"]


def test_skipped_regions_are_neither_asked_nor_labelled_and_an_answer_replaces_a_skip_only_to_overwrite(ledger):
    first, second, third = ledger.ask(0, [("a", (0, 0, 10, 10), "entropy", 1.0), ("a", (10, 10, 20, 20), "entropy", 0.9),
                                          ("b", (0, 0, 10, 10), "entropy", 0.8)])
    ledger.answer(third, np.ones((10, 10), np.uint8), by="oracle")
    assert ledger.skip([first, second, first], by="alice") == [first, second]
    assert ledger.skip([first], by="alice") == []  # skipping again changes nothing
    assert (ledger.asked(), [r.region_id for r in ledger.skipped(0)]) == ([], [first, second])
    skipped = region_by_id(ledger, first)
    assert (skipped.state, skipped.answered_by, skipped.label_path) == ("skipped", "alice", None)
    state = label_state(ledger)
    assert state.labelled_pixels == 3600 + 100  # the initial image and the answered region only
    assert A not in state.answered

    before = snapshot(ledger.run_dir)
    with pytest.raises(LedgerError, match=f"region {first} was skipped"):
        ledger.answer(first, np.ones((10, 10), np.uint8), by="label-studio")
    with pytest.raises(LedgerError, match=f"region {third} is already answered"):
        ledger.skip([third], by="alice")
    with pytest.raises(LedgerError, match="region 99 was never asked"):
        ledger.skip([99], by="alice")
    assert snapshot(ledger.run_dir) == before
    ledger.answer(first, np.ones((10, 10), np.uint8), by="label-studio", overwrite=True)
    assert region_by_id(ledger, first).state == "answered" and label_state(ledger).labelled_pixels == 3600 + 200


def test_a_bool_is_not_a_region_id(ledger):
    (region_id,) = ledger.ask(0, [("a", (0, 0, 10, 10), "entropy", 1.0)])
    assert region_id == 1
    with pytest.raises(LedgerError, match="True is not a region id"):
        ledger.answer(True, np.ones((10, 10), np.uint8), by="oracle")
    with pytest.raises(LedgerError, match="True is not a region id"):
        ledger.skip([True], by="alice")
    assert region_by_id(ledger, 1).state == "asked"


def test_the_already_answered_message_says_what_a_command_line_user_does(ledger):
    (region_id,) = ledger.ask(0, [("a", (0, 0, 10, 10), "entropy", 1.0)])
    ledger.answer(region_id, np.ones((10, 10), np.uint8), by="oracle")
    with pytest.raises(LedgerError) as refused:
        ledger.answer(region_id, np.zeros((10, 10), np.uint8), by="label-studio")
    assert "overwrite=True" not in str(refused.value) and "import the file again" in str(refused.value)


def test_stray_label_temp_files_of_a_killed_writer_are_removed_when_the_ledger_is_opened_for_writing(tmp_path):
    open_ledger(tmp_path).close()
    labels = tmp_path / "labels"
    labels.mkdir()
    strays = [labels / ".region_000001.png.k3j_x9.tmp", labels / ".region_000002.png.abc.tmp"]
    kept = [labels / "region_000001.png", labels / "notes.tmp"]
    for path in strays + kept:
        path.write_bytes(b"x")
    Ledger(tmp_path / "ledger.sqlite", readonly=True).close()
    assert all(path.exists() for path in strays)  # a reader never deletes
    Ledger(tmp_path / "ledger.sqlite").close()
    assert [path.exists() for path in strays + kept] == [False, False, True, True]


VERSION_1_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE images (
        image_id TEXT PRIMARY KEY, height INTEGER NOT NULL CHECK (height > 0),
        width INTEGER NOT NULL CHECK (width > 0), initial INTEGER NOT NULL CHECK (initial IN (0, 1)),
        acquired_whole_cycle INTEGER CHECK (acquired_whole_cycle >= 0), acquired_metric TEXT,
        acquired_score REAL, acquired_at TEXT,
        CHECK (initial = 0 OR acquired_whole_cycle IS NULL),
        CHECK ((acquired_whole_cycle IS NULL) = (acquired_at IS NULL)))""",
    """CREATE TABLE cycles (
        cycle INTEGER PRIMARY KEY CHECK (cycle >= 0), phase TEXT NOT NULL, started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL, finished_at TEXT, metrics_json TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE regions (
        region_id INTEGER PRIMARY KEY, image_id TEXT NOT NULL REFERENCES images (image_id),
        cycle INTEGER NOT NULL CHECK (cycle >= 0), y0 INTEGER NOT NULL, x0 INTEGER NOT NULL,
        y1 INTEGER NOT NULL, x1 INTEGER NOT NULL, metric TEXT NOT NULL, score REAL,
        state TEXT NOT NULL DEFAULT 'asked' CHECK (state IN ('asked', 'answered')),
        label_path TEXT, asked_at TEXT NOT NULL, answered_at TEXT, answered_by TEXT,
        CHECK (0 <= y0 AND y0 < y1 AND 0 <= x0 AND x0 < x1),
        CHECK ((state = 'answered') =
               (label_path IS NOT NULL AND answered_at IS NOT NULL AND answered_by IS NOT NULL)),
        UNIQUE (image_id, y0, x0, y1, x1))""",
    "CREATE INDEX regions_by_cycle ON regions (cycle, state)",
    "CREATE INDEX regions_by_state ON regions (state)",
)


def version_1_ledger(run_dir: Path, version: int = 1) -> Path:
    """A ledger as the version-1 code wrote it (or version 2's, which has the 'skipped' state, or
    version 3's, which has painted_at too): one image, an answered and an asked region, cycle 0."""
    path = run_dir / "ledger.sqlite"
    (run_dir / "labels").mkdir(parents=True)
    Image.fromarray(np.full((10, 10), 2, np.uint8)).save(run_dir / "labels" / "region_000001.png")
    with sqlite3.connect(path) as conn:
        for statement in VERSION_1_SCHEMA:
            states = "'asked', 'answered'" if version == 1 else "'asked', 'answered', 'skipped'"
            conn.execute(statement.replace("IN ('asked', 'answered')", f"IN ({states})"))
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", str(version)), ("seed", "7")])
        conn.execute("INSERT INTO images VALUES ('a', 70, 100, 0, NULL, NULL, NULL, NULL)")
        conn.execute("INSERT INTO cycles VALUES (0, 'answer', 't0', 't1', NULL, '{\"miou\": 0.5}')")
        conn.execute("INSERT INTO regions VALUES (1, 'a', 0, 0, 0, 10, 10, 'entropy', 0.9, 'answered', "
                     "'labels/region_000001.png', 't2', 't3', 'label-studio')")
        conn.execute("INSERT INTO regions VALUES (2, 'a', 0, 20, 20, 30, 30, 'entropy', 0.8, 'asked', "
                     "NULL, 't2', NULL, NULL)")
        if version == 3:
            conn.execute("ALTER TABLE regions ADD COLUMN painted_at TEXT")
            conn.execute("UPDATE regions SET painted_at = ? WHERE region_id = 1", (OLD_TIME,))
    return path


def test_a_version_1_ledger_is_read_as_it_is_and_migrated_in_place_when_opened_for_writing(tmp_path):
    path = version_1_ledger(tmp_path)
    with Ledger(path, readonly=True) as reader:
        assert [r.state for r in reader.regions()] == ["answered", "asked"]
    with Ledger(path) as ledger, CyclePhases(ledger) as phases:
        assert ledger.get_meta("schema_version") == 4 and ledger.get_meta("seed") == 7
        assert phases.phase(0) == "answer" and phases.metrics(0) == {"miou": 0.5}
        answered, asked = ledger.regions()
        assert (answered.box, answered.answered_by, answered.asked_at) == ((0, 0, 10, 10), "label-studio", "t2")
        assert (label_map(ledger, "a")[:10, :10] == 2).all() and asked.state == "asked"
        assert ledger.skip([asked.region_id], by="alice") == [2]
        assert {"regions_by_cycle", "regions_by_state"} <= names(path, "index")
        assert read_rows(path, "PRAGMA integrity_check") == [("ok",)] and read_rows(path, "PRAGMA foreign_key_check") == []
        (region_id,) = ledger.ask(1, [("a", (40, 40, 50, 50), "entropy", 0.1)])
        assert region_id == 3  # ids continue after the copied rows


def test_a_version_2_ledger_gains_the_painting_time_when_opened_for_writing_and_reads_it_as_unknown(tmp_path):
    path = version_1_ledger(tmp_path, version=2)
    with Ledger(path, readonly=True) as reader:
        assert [(r.state, r.painted_at) for r in reader.regions()] == [("answered", None), ("asked", None)]
    with Ledger(path) as ledger:
        assert ledger.get_meta("schema_version") == 4
        ledger.answer_many([(2, np.zeros((10, 10), np.uint8))], by="alice", painted_at={2: "2026-01-02T03:04:05+00:00"})
        assert [(r.answered_by, r.painted_at) for r in ledger.regions()] == [
            ("label-studio", None), ("alice", "2026-01-02T03:04:05+00:00")]
        assert read_rows(path, "PRAGMA integrity_check") == [("ok",)]
    with Ledger(path, readonly=True) as reader:
        assert reader.regions()[1].painted_at == "2026-01-02T03:04:05+00:00"


def test_a_version_3_ledger_gains_the_source_digest_when_opened_for_writing_and_reads_it_as_unknown(tmp_path):
    path = version_1_ledger(tmp_path, version=3)
    with Ledger(path, readonly=True) as reader:
        assert [(r.painted_at, r.source_digest) for r in reader.regions()] == [(OLD_TIME, None), (None, None)]
    with Ledger(path) as ledger:
        assert ledger.get_meta("schema_version") == 4
        ledger.answer_many([(2, np.zeros((10, 10), np.uint8))], by="alice", painted_at={2: OLD_TIME},
                           source_digests={2: "120:0f1e"})
        assert [(r.painted_at, r.source_digest) for r in ledger.regions()] == [(OLD_TIME, None), (OLD_TIME, "120:0f1e")]
        assert read_rows(path, "PRAGMA integrity_check") == [("ok",)]
    with Ledger(path, readonly=True) as reader:
        assert reader.regions()[1].source_digest == "120:0f1e"


def test_random_bytes_are_refused_as_a_ledger_naming_the_file(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(bytes(range(256)) * 64)
    for readonly in (True, False):
        with pytest.raises(LedgerError, match=f"{path}: not a label ledger"):
            Ledger(path, readonly=readonly)


def test_skip_takes_more_regions_than_sqlite_binds_in_one_statement(ledger):
    limit = 100  # bound variables per statement: 32766 in SQLite's default build, fewer than a large pool asks
    ledger._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    boxes = [(y, x, y + 1, x + 1) for y in range(10) for x in range(11)][:limit + 2]
    region_ids = ledger.ask(0, [("a", box, "entropy", None) for box in boxes])
    answered = region_ids[-1]
    ledger.answer(answered, np.zeros((1, 1), np.uint8), by="oracle")
    with pytest.raises(LedgerError, match=f"region {answered} is already answered"):
        ledger.skip(region_ids, by="alice")
    assert ledger.skip(region_ids[:-1], by="alice") == region_ids[:-1]
    assert ledger.asked() == [] and len(ledger.skipped()) == limit + 1


def test_a_ledger_that_cannot_grow_stores_no_answer_and_leaves_no_label_file(tmp_path):
    """SQLite's own 'database or disk is full' (its page limit reached, as on a full disk) while
    answers are stored: one error naming the file and saying nothing was stored, not 'not a ledger'."""
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.register_images([("a", 300, 300)])
        ledger.ask(0, [("a", (y, x, y + 10, x + 10), "entropy", 1.0) for y in range(0, 300, 10) for x in range(0, 300, 10)])
        pages = ledger._conn.execute("PRAGMA page_count").fetchone()[0]
        ledger._conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(LedgerError, match=rf"^{tmp_path / 'ledger.sqlite'}: could not be written \(database or "
                                              r"disk is full\); nothing of this write was stored, the ledger is as its last write left it"):
            ledger.answer_many([(r.region_id, np.zeros(r.shape, np.uint8)) for r in ledger.asked()], by="test")
        assert len(ledger.asked()) == 900 and not any((tmp_path / "labels").iterdir())


def test_an_sqlite_error_is_told_as_what_it_says_of_the_ledger(tmp_path):
    path = tmp_path / "ledger.sqlite"
    said = {name: str(ledger_module.ledger_error(path, error(name))) for name in
            ("SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_READONLY", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_ERROR")}
    assert all(said[name].startswith(f"{path}: could not be written (") for name in
               ("SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_READONLY"))
    assert said["SQLITE_CORRUPT"] == f"{path}: damaged (SQLITE_CORRUPT); restore it from a copy"
    assert str(ledger_module.ledger_error(path, error("SQLITE_BUSY"))).startswith(
        f"{path}: held by another process (SQLITE_BUSY); nothing of this write was stored")
    assert said["SQLITE_NOTADB"] == said["SQLITE_ERROR"].replace("SQLITE_ERROR", "SQLITE_NOTADB")
    assert said["SQLITE_NOTADB"] == f"{path}: not a label ledger (SQLITE_NOTADB)"


def error(name: str) -> sqlite3.DatabaseError:
    err = sqlite3.DatabaseError(name)
    err.sqlite_errorname = name
    return err
