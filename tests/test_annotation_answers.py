"""Importing answers into the ledger: what is accepted, and that every refused file leaves the run
folder byte-for-byte unchanged."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import s4al.annotation.masks as masks_module
from conftest import disk_full_at, label_map, label_state, region_by_id
from s4al.active.ledger import COLOURS_META, PROJECT_META, SAID_META, Ledger, LedgerError, Region
from s4al.active.phases import CyclePhases
from s4al.annotation.answers import import_answers
from s4al.annotation.label_studio import task
from s4al.annotation.masks import AnswerError, utc_time
from s4al.cli import app
from s4al.config import load_config, save_config
from s4al.data.classes import ClassSet
from s4al.run_folder import RunFolderError
from test_annotation_label_studio import asked_rectangles, exported_task

REPO = Path(__file__).resolve().parents[1]

CLASSES = ["sky", "road", "car"]
CLASS_SET = ClassSet(names=tuple(CLASSES), colors=((70, 130, 180), (128, 64, 128), (0, 0, 142)))
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
    """Bytes of the ledger and the listing of labels/: what a refused import must not change."""
    ledger = hashlib.sha256((run / "ledger.sqlite").read_bytes()).hexdigest()
    labels = sorted(p.name for p in (run / "labels").iterdir()) if (run / "labels").exists() else None
    return ledger, labels


def answers_state(run):
    """The ledger's rows but what the last import said, and the listing of labels/: what an import
    that keeps every answer as it was must not change."""
    with closing(sqlite3.connect(f"file:{run / 'ledger.sqlite'}?mode=ro", uri=True)) as conn:
        rows = [line for line in conn.iterdump() if SAID_META not in line]
    return rows, sorted(p.name for p in (run / "labels").iterdir())


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
            assert np.array_equal(crop(label_map(ledger, image_id), box), crop(truth(image_id), box))


def test_a_relation_drawn_between_regions_in_label_studio_paints_nothing_and_is_let_be(run_dir, tmp_path):
    task = task_of(1, "a", truth("a"), [1, 2])
    result = task["annotations"][0]["result"]
    # as Label Studio exports a relation (label-studio-sdk's region.py writes them so): no 'value'
    result.append({"type": "relation", "from_id": result[0]["id"], "to_id": result[-1]["id"], "direction": "right"})
    assert import_answers(run_dir, write_export(tmp_path / "e.json", task)).answered == [1, 2]
    task["annotations"][0]["result"] = [{"type": "brush", "from_name": "x"}]  # a region without its value
    with pytest.raises(AnswerError, match="the annotation's 'result' must be a list of regions, each with a 'value'"):
        import_answers(run_dir, write_export(tmp_path / "bad.json", task))


def test_a_region_is_answered_from_half_its_pixels_painted_and_below_that_stays_asked(run_dir, tmp_path):
    labels = np.full((H, W), 255, np.uint8)
    labels[10:15, 20:30] = 2  # A2: 50 of its 100 pixels
    labels[0:5, 0:10] = 1  # A1: 49 of its 100 pixels
    labels[4, 9] = 255
    report = import_answers(run_dir, write_export(tmp_path / "e.json", task_of(1, "a", labels, [1, 2])))
    assert report.answered == [2] and report.void_pixels == 50 and report.still_asked == 2
    assert report.not_answered == {1: 0.49} and report.ignored_pixels == {}
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.region_id for r in ledger.asked()] == [1, 3]
        patch = ledger.patch(region_by_id(ledger, 2))
        assert (patch[:5] == 2).all() and (patch[5:] == 255).all()
        assert label_state(ledger).labelled_pixels == H * W + 100  # image 'c' and A2


def test_a_task_painted_further_after_its_first_import_answers_what_is_left(run_dir, tmp_path):
    first = np.full((H, W), 255, np.uint8)
    first[10:20, 20:30] = 2  # A2 answered; A1 not painted yet
    assert import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", first, [1, 2]))).answered == [2]
    updated = first.copy()
    updated[0:10, 0:10] = 1
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", task_of(1, "a", updated, [1, 2])))
    assert (report.answered, report.ignored_pixels, report.already_imported) == ([1], {}, 0)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert (ledger.patch(region_by_id(ledger, 2)) == 2).all()  # the first answer stays


def test_a_task_corrected_after_its_import_replaces_the_earlier_answer_of_the_region_it_changed(run_dir, tmp_path):
    first = truth("a")
    import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", first, [1, 2])))
    reviewed = first.copy()
    reviewed[2:6, 3:8] = 2  # a reviewer repaints 20 pixels of A1 as 'car'; A2 untouched
    a2_file = (run_dir / "labels" / "region_000002.png").read_bytes()
    export = write_export(tmp_path / "e2.json", task_of(1, "a", reviewed, [1, 2]), task_of(2, "b", truth("b"), [3]))
    report = import_answers(run_dir, export)
    assert (report.answered, report.corrected, report.already_imported, report.still_asked) == ([3], [1], 0, 0)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        expected = crop(first, A1).copy()
        expected[2:6, 3:8] = 2
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), expected)
        assert np.array_equal(ledger.patch(region_by_id(ledger, 2)), crop(first, A2))
    assert (run_dir / "labels" / "region_000002.png").read_bytes() == a2_file  # not rewritten
    before = snapshot(run_dir)
    again = import_answers(run_dir, export)  # the same export: nothing changed since
    assert (again.answered, again.corrected, again.already_imported) == ([], [], 2)
    assert snapshot(run_dir) == before


def test_an_older_export_imported_after_a_correction_leaves_the_corrected_answer(run_dir, tmp_path):
    first, reviewed = truth("a"), truth("a")
    reviewed[2:6, 3:8] = 2
    older_task = task_of(1, "a", first, [1, 2])
    older_task["annotations"][0]["updated_at"] = "2026-03-09T22:16:08.728378Z"  # Label Studio's form
    older = write_export(tmp_path / "e1.json", older_task)
    newer_task = task_of(1, "a", reviewed, [1, 2])
    newer_task["annotations"][0]["updated_at"] = "2026-03-10T08:00:00.000001+01:00"  # 07:00 UTC, the next day
    newer = write_export(tmp_path / "e2.json", newer_task)
    import_answers(run_dir, older)
    assert import_answers(run_dir, newer).corrected == [1]
    before = answers_state(run_dir)
    report = import_answers(run_dir, older, dry_run=True)  # the first export again: its painting is the older one
    assert (report.corrected, report.outdated, report.already_imported) == ([], [1], 0)
    assert report.older == ("2026-03-09T22:16:08.728378+00:00", "2026-03-10T07:00:00.000001+00:00")
    assert answers_state(run_dir) == before
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(reviewed, A1))
        assert region_by_id(ledger, 1).painted_at == "2026-03-10T07:00:00.000001+00:00"
        assert region_by_id(ledger, 2).painted_at == "2026-03-09T22:16:08.728378+00:00"  # as the first export said
    result = CliRunner().invoke(app, ["import", str(run_dir), str(older)], env={"COLUMNS": "250"})
    assert ("an older export: its newest painting is from 2026-03-09 22:16:08 UTC, but answers imported before were "
            "painted up to 2026-03-10 07:00:00 UTC (an earlier download?); it replaces none of them\nleft 1 region "
            "answered as before: painted otherwise here, but before the stored answer (an earlier export or mask?): "
            "1\n") in result.output
    assert answers_state(run_dir) == before


def test_an_older_export_imported_after_a_newer_one_never_replaces_its_answers(run_dir, tmp_path):
    first, reviewed = truth("a"), truth("a")
    reviewed[2:6, 3:8] = 2
    older_task, newer_task = task_of(1, "a", first, [1, 2]), task_of(1, "a", reviewed, [1, 2])
    older_task["annotations"][0]["updated_at"] = "2026-03-09T10:00:00Z"
    newer_task["annotations"][0]["updated_at"] = "2026-03-09T11:00:00Z"
    import_answers(run_dir, write_export(tmp_path / "e2.json", newer_task))  # the newer export came first
    report = import_answers(run_dir, write_export(tmp_path / "e1.json", older_task))
    assert (report.corrected, report.outdated) == ([], [1])
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(reviewed, A1))


def test_a_mask_file_older_than_the_stored_answer_leaves_it_and_a_newer_one_corrects_it(run_dir, tmp_path):
    reviewed_task = task_of(1, "a", truth("a"), [1, 2])
    reviewed_task["annotations"][0]["updated_at"] = "2026-03-09T11:00:00Z"
    import_answers(run_dir, write_export(tmp_path / "e.json", reviewed_task))
    repainted = truth("a")
    repainted[10:20, 20:30] = 0
    folder = png_folder(tmp_path, "a.png", repainted)
    eleven = datetime(2026, 3, 9, 11, tzinfo=timezone.utc).timestamp()
    os.utime(folder / "a.png", (eleven - 1, eleven - 1))  # written a second before the stored answer was painted
    assert (import_answers(run_dir, folder).outdated, import_answers(run_dir, folder).corrected) == ([2], [])
    os.utime(folder / "a.png", (eleven + 1, eleven + 1))
    assert import_answers(run_dir, folder).corrected == [2]
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert (ledger.patch(region_by_id(ledger, 2)) == 0).all()
        assert region_by_id(ledger, 2).painted_at == "2026-03-09T11:00:01.000000+00:00"


def test_a_painting_time_reads_as_one_utc_form_and_an_unreadable_one_as_unknown():
    assert utc_time("2021-03-09T22:16:08.728378Z") == "2021-03-09T22:16:08.728378+00:00"  # Label Studio's form
    assert utc_time("2021-03-10T00:16:08+02:00") == "2021-03-09T22:16:08.000000+00:00"
    assert utc_time("2021-03-09T22:16:08") == "2021-03-09T22:16:08.000000+00:00"  # no zone: UTC
    assert [utc_time(value) for value in (None, 17, "", "yesterday")] == [None] * 4
    assert utc_time("0001-01-01T00:00:00+05:00") is None  # before year 1 in UTC
    assert utc_time("9999-12-31T23:00:00-05:00") is None  # past 9999


def test_a_dry_run_reports_what_the_import_then_does_and_writes_nothing(run_dir, tmp_path):
    import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", in_box(truth("a"), A1), [1, 2])))
    reviewed = in_box(truth("a"), A1)
    reviewed[2:6, 3:8] = 2
    declined = exported_task(2, {"image_id": "b", "region_ids": [3]}, truth("b"), names=CLASSES, was_cancelled=True)
    export = write_export(tmp_path / "e2.json", task_of(1, "a", reviewed, [1, 2]), declined)
    before = snapshot(run_dir)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export), "--dry-run"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Dry run, no answer written; the import would do this:\nanswered 0 regions")
    assert "skipped 1 region of skipped tasks (3); 1 region still asked." in result.output  # A2, left unpainted
    assert "Continue with" not in result.output
    dry = import_answers(run_dir, export, dry_run=True)
    assert snapshot(run_dir) == before
    assert import_answers(run_dir, export) == dry  # what it said, it does
    assert (dry.corrected, dry.skipped, dry.not_answered) == ([1], [3], {2: 0.0})


def test_the_temp_file_of_a_download_killed_halfway_is_removed_by_the_next_import(run_dir, tmp_path):
    answers = run_dir / "answers"
    answers.mkdir()
    stray = answers / ".label_studio_20261206T070000000000Z.json.k3x.tmp"  # a project's export, cut by a kill
    kept = [answers / "label_studio_20261205T070000000000Z.json", answers / "notes.tmp"]
    for path in [stray, *kept]:
        path.write_bytes(b"[{")
    export = write_export(tmp_path / "e1.json", task_of(1, "a", in_box(truth("a"), A1), [1, 2]))
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)])
    assert result.exit_code == 0, result.output
    assert not stray.exists() and all(path.exists() for path in kept)


def test_a_correction_while_a_cycle_is_part_trained_is_refused_so_its_resume_stays_exact(run_dir, tmp_path):
    first = truth("a")
    import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", first, [1, 2])))
    with Ledger(run_dir / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        for phase in ("train", "acquire", "answer", "done"):
            phases.set_phase(0, phase)
        phases.set_phase(1, "train")  # cycle 1 trains with A1's answer; killed after its first checkpoint
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "cycle_1.pt").write_bytes(b"")
    reviewed = first.copy()
    reviewed[2:6, 3:8] = 2
    before = snapshot(run_dir)
    with pytest.raises(AnswerError, match=r"e2.json: corrects region 1 answered before, while cycle 1 has trained "
                                          r"part-way with the labels as they were: resume the run until cycle 1 has "
                                          r"trained \(s4al run --resume .*\), then import again; nothing written"):
        import_answers(run_dir, write_export(tmp_path / "e2.json", task_of(1, "a", reviewed, [1, 2])))
    assert snapshot(run_dir) == before


def test_two_tasks_painting_one_answered_region_two_ways_are_refused_rather_than_taking_turns(run_dir, tmp_path):
    first = truth("a")
    import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", first, [1, 2])))
    reviewed = first.copy()
    reviewed[2:6, 3:8] = 2  # the fix, in a second copy of the task (tasks.json imported twice)
    export = write_export(tmp_path / "e2.json", task_of(1, "a", first, [1, 2]), task_of(4, "a", reviewed, [1, 2]))
    before = snapshot(run_dir)
    # taking the one unlike the stored answer would take the other on the next import, and so on
    with pytest.raises(AnswerError, match=r"task 4 \(image 'a'\): region 1 is painted otherwise than in .*task 1 "
                                          r"\(image 'a'\): keep one of the two$"):
        import_answers(run_dir, export)
    assert snapshot(run_dir) == before


def painted_at(made_task, time):
    made_task["annotations"][0]["updated_at"] = time
    return made_task


@pytest.mark.parametrize("fix_first", [False, True])
def test_a_task_imported_before_and_a_second_painting_of_its_region_are_refused_in_either_order(
        run_dir, tmp_path, fix_first):
    """The task imported before is left unread (its answers are stored): the second painting is compared
    with them."""
    imported = painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T10:00:00Z")
    import_answers(run_dir, write_export(tmp_path / "e1.json", imported))
    reviewed = truth("a")
    reviewed[2:6, 3:8] = 2
    fix = painted_at(task_of(4, "a", reviewed, [1, 2]), "2026-03-09T11:00:00Z")
    first, second = (fix, imported) if fix_first else (imported, fix)
    before = snapshot(run_dir)
    with pytest.raises(AnswerError, match=rf"task {second['id']} \(image 'a'\): region 1 is painted otherwise than in "
                                          rf".*task {first['id']} \(image 'a'\): keep one of the two$"):
        import_answers(run_dir, write_export(tmp_path / "e2.json", first, second))
    assert snapshot(run_dir) == before


def test_a_task_imported_before_and_saved_at_the_same_time_since_is_that_painting_and_left_unread(run_dir, tmp_path):
    """Decoding is most of an import's time: a project's full export, imported after every cycle,
    decodes only the tasks painted since the last import."""
    imported = painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T10:00:00Z")
    import_answers(run_dir, write_export(tmp_path / "e1.json", imported))
    imported["annotations"][0]["result"][0]["value"]["rle"][4:] = [255] * 8  # a change only decoding would see
    before = snapshot(run_dir)
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", imported))
    assert (report.answered, report.corrected, report.already_imported) == ([], [], 1)
    assert snapshot(run_dir) == before
    painted_at(imported, "2026-03-09T10:00:01Z")  # saved again: decoded
    with pytest.raises(AnswerError, match=r"task 1 \(image 'a'\): brush region brush0: corrupt RLE mask"):
        import_answers(run_dir, write_export(tmp_path / "e3.json", imported))


def test_a_mask_imported_before_and_unchanged_since_is_left_unread_whatever_its_time(run_dir, tmp_path, monkeypatch):
    folder = png_folder(tmp_path, "a.png", truth("a"))
    assert import_answers(run_dir, folder).answered == [1, 2]
    written_at = (folder / "a.png").stat().st_mtime_ns
    os.utime(folder / "a.png", ns=(written_at + 10**9, written_at + 10**9))  # copied again: the same bytes
    monkeypatch.setattr(masks_module, "_read_mask", lambda path, colours: pytest.fail(f"{path} decoded"))
    before = snapshot(run_dir)
    assert import_answers(run_dir, folder).already_imported == 1
    assert snapshot(run_dir) == before
    monkeypatch.undo()
    (folder / "a.png").write_bytes(b"not a PNG: a change only reading the file would see")
    os.utime(folder / "a.png", ns=(written_at, written_at))  # the time it was imported with: read all the same
    with pytest.raises(AnswerError, match=r"a\.png"):
        import_answers(run_dir, folder)


def stored(run_dir):
    """Every region's row as the ledger holds it, and the bytes of every file in labels/."""
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        rows = [(r.region_id, r.state, r.label_path, r.answered_by, r.painted_at) for r in ledger.regions()]
    return rows, {path.name: path.read_bytes() for path in sorted((run_dir / "labels").iterdir())}


def test_a_mask_corrected_keeping_the_time_of_the_one_imported_replaces_the_answers_it_changes(run_dir, tmp_path):
    folder = png_folder(tmp_path, "a.png", truth("a"))
    ten = datetime(2026, 1, 1, 10, tzinfo=timezone.utc).timestamp()
    os.utime(folder / "a.png", (ten, ten))
    assert import_answers(run_dir, folder).answered == [1, 2]
    corrected = truth("a")
    corrected[10:20, 20:30] = 0  # A2 repainted as 'sky'
    Image.fromarray(corrected).save(folder / "a.png")
    os.utime(folder / "a.png", (ten, ten))  # copied with its time kept (cp -p, rsync -a, an archive)
    report = import_answers(run_dir, folder)
    assert (report.corrected, report.outdated, report.already_imported) == ([2], [], 0)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert (ledger.patch(region_by_id(ledger, 2)) == 0).all()
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(truth("a"), A1))
    # answers stored before their mask's digest was kept are known by the mask's time, as they were
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        conn.execute("UPDATE regions SET source_digest = NULL")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(folder / "a.png")
    os.utime(folder / "a.png", (ten, ten))
    assert import_answers(run_dir, folder).already_imported == 1
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        assert (ledger.patch(region_by_id(ledger, 2)) == 0).all()
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(truth("a"), A1))


def test_an_answer_whose_stored_file_is_lost_is_written_again_by_importing_its_mask_again(run_dir, tmp_path):
    folder = png_folder(tmp_path, "a.png", truth("a"))
    assert import_answers(run_dir, folder).answered == [1, 2]
    (run_dir / "labels" / "region_000002.png").unlink()
    report = import_answers(run_dir, folder)  # the very file imported, its time unchanged
    assert (report.corrected, report.answered, report.already_imported) == ([], [], 0)
    assert report.repaired == [2]
    damaged = run_dir / "labels" / "region_000001.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n, and nothing more")
    assert import_answers(run_dir, folder).already_imported == 1  # stored files are looked for, not decoded
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger, pytest.raises(
            LedgerError, match=r"region_000001.png: the stored answer of region 1 \(image 'a', cycle 0\) is missing or "
                               r"unreadable .*; delete the damaged file, then import its answer again"):
        ledger.patch(region_by_id(ledger, 1))
    damaged.unlink()
    assert import_answers(run_dir, folder).repaired == [1]
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        for region_id, box in ((1, A1), (2, A2)):
            assert np.array_equal(ledger.patch(region_by_id(ledger, region_id)), crop(truth("a"), box))
    again = import_answers(run_dir, folder)
    assert (again.repaired, again.already_imported) == ([], 1)


def test_an_export_imported_again_writes_a_lost_answer_again(run_dir, tmp_path):
    export = write_export(tmp_path / "e.json", task_of(1, "a", truth("a"), [1, 2]))
    import_answers(run_dir, export)
    (run_dir / "labels" / "region_000001.png").unlink()
    report = import_answers(run_dir, export)
    assert (report.corrected, report.already_imported) == ([], 0)
    assert report.repaired == [1]
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(truth("a"), A1))


def test_a_full_disk_while_importing_corrections_is_one_line_naming_the_file_and_imports_nothing(
        run_dir, tmp_path, monkeypatch):
    folder = png_folder(tmp_path, "a.png", truth("a"))
    import_answers(run_dir, folder)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(folder / "a.png")  # both regions corrected
    later = (folder / "a.png").stat().st_mtime + 10
    os.utime(folder / "a.png", (later, later))
    before = stored(run_dir)
    disk_full_at(monkeypatch, 2)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(folder)], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert result.output == (f"error: {run_dir / 'labels' / 'region_000002.v2.png'}: could not write the label patch "
                             f"(No space left on device); nothing was imported from {folder}: make room on the disk "
                             "(or make the folder writable) and import again\n")
    assert stored(run_dir) == before


def test_an_edit_that_leaves_an_answered_region_under_half_painted_keeps_the_earlier_answer(run_dir, tmp_path):
    import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", truth("a"), [1, 2])))
    erased = truth("a")
    erased[0:6, 0:10] = 255  # 60 of A1's 100 pixels erased
    before = answers_state(run_dir)
    export = write_export(tmp_path / "e2.json", task_of(1, "a", erased, [1, 2]))
    report = import_answers(run_dir, export, dry_run=True)
    assert (report.answered, report.corrected, report.already_imported) == ([], [], 0)  # named once, below
    assert report.edits_under_minimum == {1: 0.4}  # said, not passed over in silence
    assert answers_state(run_dir) == before
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert ("kept the earlier answer of region 1 (40.0%), painted otherwise now but under 50%: to correct one, "
            f"paint at least that much of it; to take one back: s4al skip {run_dir} --withdraw --region 1") in result.output
    assert "already imported" not in result.output  # not also said to be left alone


def test_an_edit_erasing_a_tasks_region_or_its_whole_annotation_is_named_with_how_to_take_the_answer_back(
        run_dir, tmp_path):
    """A task lists its regions: one it leaves unpainted after its import was erased there (a mask
    folder's image may leave another cycle's region unpainted, so a mask is not read so)."""
    import_answers(run_dir, write_export(tmp_path / "e1.json", painted_at(task_of(1, "a", truth("a"), [1, 2]),
                                                                          "2026-03-09T10:00:00Z")))
    erased = truth("a")
    erased[A2[0]:A2[2], A2[1]:A2[3]] = 255
    before = answers_state(run_dir)
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", painted_at(task_of(1, "a", erased, [1, 2]),
                                                                                   "2026-03-09T11:00:00Z")))
    assert (report.answered, report.corrected, report.edits_under_minimum) == ([], [], {2: 0.0})
    emptied = write_export(tmp_path / "e3.json", painted_at(task_of(1, "a", np.full((H, W), 255, np.uint8), [1, 2]),
                                                            "2026-03-09T12:00:00Z"))
    assert import_answers(run_dir, emptied).edits_under_minimum == {1: 0.0, 2: 0.0}
    result = CliRunner().invoke(app, ["import", str(run_dir), str(emptied)], env={"COLUMNS": "250"})
    assert ("kept the earlier answer of regions 1 (0.0%), 2 (0.0%), painted otherwise now but under 50%: to correct "
            f"one, paint at least that much of it; to take one back: s4al skip {run_dir} --withdraw --region 1 "
            "--region 2") in result.output
    assert answers_state(run_dir) == before
    folder = png_folder(tmp_path, "a.png", erased)  # a mask of 'a' painting A1 alone says nothing of A2
    assert import_answers(run_dir, folder).edits_under_minimum == {}


def test_a_mask_folder_imported_again_with_one_region_repainted_corrects_that_region(run_dir, tmp_path):
    folder = png_folder(tmp_path, "a.png", truth("a"))
    assert sorted(import_answers(run_dir, folder).answered) == [1, 2]
    repainted = truth("a")
    repainted[10:20, 20:30] = 0  # all of A2 is 'sky' now
    Image.fromarray(repainted).save(folder / "a.png")
    result = CliRunner().invoke(app, ["import", str(run_dir), str(folder)])
    assert result.exit_code == 0 and "answered 0 regions" in result.output
    assert "corrected 1 region answered before, painted otherwise now" in result.output and "): 2\n" in result.output
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert (ledger.patch(region_by_id(ledger, 2)) == 0).all()
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(truth("a"), A1))
        assert {r.answered_by for r in ledger.answered()} == {"png-folder"}


def test_masks_imported_again_are_compared_with_the_memory_of_a_few_of_them(tmp_path):
    """24 masks of 1 MB each, answered before: checking them for corrections holds their regions'
    patches, never the masks themselves (each would keep 1 MB)."""
    run, side = tmp_path / "run", 1024
    with Ledger(run / "ledger.sqlite") as ledger:
        ledger.register_images([(f"m{k}", side, side) for k in range(24)])
        ledger.set_meta("classes", CLASSES)
        ledger.ask(0, [(f"m{k}", (0, 0, 10, 10), "entropy", 1.0) for k in range(24)])
    folder = tmp_path / "masks"
    folder.mkdir()
    for k in range(24):
        Image.fromarray(np.full((side, side), k % 3, np.uint8)).save(folder / f"m{k}.png")
    assert len(import_answers(run, folder).answered) == 24
    tracemalloc.start()
    try:
        report = import_answers(run, folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.already_imported == 24
    assert peak < 6 * 2**20


def test_a_few_stray_pixels_left_after_erasing_do_not_use_a_region_up(run_dir, tmp_path):
    labels = np.full((H, W), 255, np.uint8)
    labels[0, 0:4] = 1  # 4 of A1's 100 pixels, left under the outline after erasing
    labels[10:20, 20:30] = 0  # A2 answered
    report = import_answers(run_dir, write_export(tmp_path / "e.json", task_of(1, "a", labels, [1, 2])))
    assert report.answered == [2] and report.not_answered == {1: 0.04}
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert region_by_id(ledger, 1).state == "asked"
        assert label_state(ledger).labelled_pixels == H * W + 100  # image 'c' and A2: nothing of A1


def test_a_task_skipped_after_its_answers_were_imported_keeps_them_and_says_so(run_dir, tmp_path):
    import_answers(run_dir, write_export(tmp_path / "e1.json", painted_at(task_of(1, "a", truth("a"), [1, 2]),
                                                                          "2026-03-09T10:00:00Z")))
    before = answers_state(run_dir)
    skipped = painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T11:00:00Z")
    skipped["annotations"][0]["was_cancelled"] = True  # Skip pressed on the task once imported
    export = write_export(tmp_path / "e2.json", skipped)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert ("kept 2 regions answered, the task skipped after the painting: an answer stays until painted "
            "otherwise: 1, 2") in result.output
    assert answers_state(run_dir) == before


def test_answers_whose_annotation_was_deleted_in_label_studio_stay_and_are_named(run_dir, tmp_path):
    save_config(load_config("demo", {"active": {"annotator": "external"}}), run_dir / "config.yaml")  # a whole run folder: the import says what comes next
    import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", truth("a"), [1, 2]),
                                         task_of(2, "b", truth("b"), [3])))
    deleted = task_of(1, "a", truth("a"), [1, 2])
    deleted["annotations"] = []  # its annotation deleted in Label Studio; task 2's is there
    export = write_export(tmp_path / "e2.json", deleted, task_of(2, "b", truth("b"), [3]))
    before = answers_state(run_dir)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert ("kept 2 regions answered, the task without an annotation in this export any more (deleted in Label "
            f"Studio?): 1, 2\nto take back an answer kept so: s4al skip {run_dir} --withdraw --region ID") in result.output
    assert import_answers(run_dir, export).annotation_gone == [1, 2] and answers_state(run_dir) == before
    again = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"}).output
    assert "kept" not in again  # said once, by the import that found it
    only = write_export(tmp_path / "e3.json", deleted)  # the only task: nothing submitted; task 2 deleted whole now
    said = CliRunner().invoke(app, ["import", str(run_dir), str(only)], env={"COLUMNS": "250"}).output
    assert "kept 2 regions answered, the task without" not in said
    assert ("kept 1 region answered, their task not in this export (deleted in Label Studio, or an export of part of "
            "the project?): 3") in said
    assert answers_state(run_dir) == before
    part = write_export(tmp_path / "e4.json", task_of(2, "b", truth("b"), [3]))  # an export of part of the project
    said = CliRunner().invoke(app, ["import", str(run_dir), str(part)], env={"COLUMNS": "250"}).output
    assert "kept 2 regions answered, their task not in this export (deleted in Label Studio, or an export" in said
    said = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"}).output
    assert "kept 2 regions answered, the task without" in said  # found again after an import that did not find it


def test_answers_imported_before_the_runs_project_was_made_anew_are_not_taken_for_deleted_tasks(run_dir, tmp_path):
    """`s4al query --new-project` puts a new project in place of one deleted: the answers imported from
    the old one have no task in the new one's exports, and are not named as deleted there."""
    import_answers(run_dir, write_export(tmp_path / "e1.json", task_of(1, "a", truth("a"), [1, 2])))
    made = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.set_meta(PROJECT_META, {"url": "http://127.0.0.1:8080", "id": 4, "since": made})  # as --new-project
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", task_of(1, "b", truth("b"), [3])))
    assert (report.answered, report.task_gone) == ([3], [])


def test_a_second_edit_under_half_painted_is_said_as_the_first_was(run_dir, tmp_path):
    """What an edit under the minimum keeps is of that painting: another edit of the region is said too."""
    import_answers(run_dir, write_export(tmp_path / "e1.json", painted_at(task_of(1, "a", truth("a"), [1, 2]),
                                                                          "2026-03-09T10:00:00Z")))
    for name, (rows, cols), hour, share in (("e2", (6, 10), "11", "40.0"), ("e3", (7, 10), "12", "30.0")):
        edited = truth("a")
        edited[:rows, :cols] = 255  # of A1's 10 x 10 pixels, 60 and then 70 erased
        export = write_export(tmp_path / f"{name}.json",
                              painted_at(task_of(1, "a", edited, [1, 2]), f"2026-03-09T{hour}:00:00Z"))
        output = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"}).output
        assert f"kept the earlier answer of region 1 ({share}%), painted otherwise now but under 50%" in output


def test_a_new_export_lacking_the_task_painted_last_is_no_older_export_and_names_it_gone(run_dir, tmp_path):
    """The file's newest painting is older than an answer stored, but that answer's task is not in
    the file (deleted in Label Studio since): the file is not older, the deletion is said."""
    first, second = (painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T10:00:00Z"),
                     painted_at(task_of(2, "b", truth("b"), [3]), "2026-03-09T11:00:00Z"))
    import_answers(run_dir, write_export(tmp_path / "e1.json", first, second))
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", first), dry_run=True)
    assert (report.older, report.task_gone) == (None, [3])
    older = painted_at(task_of(1, "a", truth("b"), [1, 2]), "2026-03-09T09:00:00Z")  # before the stored answer
    report = import_answers(run_dir, write_export(tmp_path / "e3.json", older), dry_run=True)
    assert (report.older, report.outdated, report.task_gone) == (
        ("2026-03-09T09:00:00.000000+00:00", "2026-03-09T10:00:00.000000+00:00"), [1, 2], [])


def test_an_export_with_nothing_submitted_yet_imports_nothing_without_an_error(run_dir, tmp_path):
    unannotated = task_of(1, "a", truth("a"), [1, 2])
    unannotated["annotations"] = []
    export = write_export(tmp_path / "e.json", unannotated)
    before = snapshot(run_dir)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert (result.exit_code, result.output) == (0, f"{export}: no task in it is submitted or skipped, nothing to "
                                                    "import; 3 regions still asked.\n")
    assert snapshot(run_dir) == before


def test_a_task_with_a_draft_but_nothing_submitted_is_named_while_its_regions_are_asked(run_dir, tmp_path):
    drafted = task_of(1, "a", truth("a"), [1, 2])
    drafted["drafts"] = [{**drafted.pop("annotations")[0], "id": 40}]  # saved by the editor, never submitted
    drafted["annotations"] = []
    export = write_export(tmp_path / "e.json", drafted, task_of(2, "b", truth("b"), [3]))
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert ("1 task with a draft saved in Label Studio but nothing submitted, regions left asked: task 1 (image "
            "'a'); submit the draft there to answer") in result.output
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.region_id for r in ledger.asked()] == [1, 2]
        ledger.skip([1, 2], by="test")  # nothing of the drafted task asked any more: nothing to say of its draft
    assert import_answers(run_dir, export).drafted == []


def test_an_imported_task_whose_edit_is_left_as_a_draft_is_named_and_read_as_submitted(run_dir, tmp_path):
    task = painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T10:00:00Z")
    import_answers(run_dir, write_export(tmp_path / "e1.json", task))
    before = answers_state(run_dir)
    edited = {**task, "drafts": [41]}  # a reviewer's edit the editor saved, Update never clicked
    export = write_export(tmp_path / "e2.json", edited)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert ("1 task with an edit saved as a draft in Label Studio, not submitted, read as last submitted: task 1 "
            "(image 'a'); click Update there for the edit to count, and import again") in result.output
    assert answers_state(run_dir) == before
    assert import_answers(run_dir, write_export(tmp_path / "e3.json", task)).edits_drafted == []
    declined = {**task_of(2, "b", truth("b"), [3]), "drafts": [42]}
    declined["annotations"][0]["was_cancelled"] = True  # skipped, a draft begun: no edit of an answer waits
    assert import_answers(run_dir, write_export(tmp_path / "e4.json", declined)).edits_drafted == []


def test_every_task_an_export_cannot_take_is_named_in_one_refusal(run_dir, tmp_path):
    twice = task_of(1, "a", truth("a"), [1, 2])
    twice["annotations"].append({**twice["annotations"][0], "id": 2001})  # a second annotator, no star set
    truck = exported_task(2, {"image_id": "b", "region_ids": [3]}, truth("b"), names=["sky", "truck", "car"])
    export = write_export(tmp_path / "e.json", twice, truck)
    before = snapshot(run_dir)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert result.output.startswith(
        f"error: answers refused, nothing written: {export}: task 1 (image 'a'): 2 annotations (1001, 2001); mark the "
        f"one to use as ground truth in Label Studio (its star), or delete the others; {export}: task 2 (image 'b'): "
        "unknown class 'truck' (known: sky, road, car); repaint the task"), result.output
    assert snapshot(run_dir) == before
    cut = task_of(1, "a", truth("a"), [1, 2])  # its brushes read as painted only once decoded
    rle = cut["annotations"][0]["result"][0]["value"]["rle"]
    del rle[len(rle) // 2:]
    result = CliRunner().invoke(app, ["import", str(run_dir), str(write_export(tmp_path / "e2.json", cut, truck))],
                                env={"COLUMNS": "250"})
    assert (result.exit_code, result.output.count("corrupt RLE mask"), result.output.count("unknown class 'truck'")) \
        == (1, 1, 1), result.output
    listed = CliRunner().invoke(app, ["import", str(run_dir), str(written(tmp_path / "e3.json", "[1, 2]"))],
                                env={"COLUMNS": "250"})
    assert (listed.exit_code, listed.output.count("not a Label Studio task"), "tasks file" in listed.output) == (1, 2, False)
    assert snapshot(run_dir) == before


def test_a_file_that_answers_nothing_says_why(run_dir, tmp_path):
    labels = np.full((H, W), 255, np.uint8)
    labels[0, 0:4] = 1
    with pytest.raises(AnswerError, match=r"nothing to answer: region 1 is 4.0% painted \(an answer needs 50%\); "
                                          r"region 2 is 0.0% painted"):
        import_answers(run_dir, write_export(tmp_path / "e.json", task_of(1, "a", labels, [1, 2])))


@pytest.fixture
def run_of_13(tmp_path):
    """A run that asked 13 regions of image 'a', 2x2 pixels each along its top rows, ids 1..13."""
    run = tmp_path / "run13"
    with Ledger(run / "ledger.sqlite") as ledger:
        ledger.register_images([("a", H, W)])
        ledger.set_meta("classes", CLASSES)
        ledger.ask(0, [("a", (0, x, 2, x + 2), "entropy", 1.0) for x in range(0, 26, 2)])
    return run


def test_a_file_that_answers_nothing_names_the_first_regions_and_counts_the_rest(run_of_13, tmp_path):
    labels = np.full((H, W), 255, np.uint8)
    labels[19, 0] = 1  # outside every region
    with pytest.raises(AnswerError) as refused:
        import_answers(run_of_13, write_export(tmp_path / "e.json", task_of(1, "a", labels, list(range(1, 14)))))
    reasons = "; ".join(f"region {k} is 0.0% painted (an answer needs 50%)" for k in range(1, 11))
    assert str(refused.value).endswith(f"nothing to answer: {reasons} (and 3 more)")


def test_import_and_skip_name_the_first_ten_regions_of_many(run_of_13, tmp_path):
    labels = np.full((H, W), 255, np.uint8)
    labels[0:2, 0:2] = 1  # region 1 answered, 2..13 left asked
    export = write_export(tmp_path / "e.json", task_of(1, "a", labels, list(range(1, 14))))
    imported = CliRunner().invoke(app, ["import", str(run_of_13), str(export)])
    assert imported.exit_code == 0, imported.output
    shares = ", ".join(f"{k} (0.0%)" for k in range(2, 12))
    assert imported.output.splitlines()[1] == (
        f"not answered, under 50% painted, left asked: regions {shares} (and 2 more); paint more and import again, "
        f"or skip: s4al skip {run_of_13} --region ID ... (or every region still asked: s4al skip {run_of_13})")
    skipped = CliRunner().invoke(app, ["skip", str(run_of_13), *(f"--region={k}" for k in range(2, 13))])
    assert skipped.exit_code == 0, skipped.output
    assert skipped.output == f"skipped 11 regions ({', '.join(map(str, range(2, 12)))} (and 1 more)); 1 region still asked.\n"


def test_skip_of_one_cycle_leaves_the_regions_another_cycle_asks(run_dir):
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        (later,) = ledger.ask(1, [("b", (10, 0, 20, 10), "entropy", 0.5)])  # a cycle asked since
    refused = CliRunner().invoke(app, ["skip", str(run_dir), "--cycle", "0", "--region", "1"], env={"COLUMNS": "250"})
    assert (refused.exit_code, "give one or the other" in refused.output) == (2, True), refused.output
    skipped = CliRunner().invoke(app, ["skip", str(run_dir), "--cycle", "0"], env={"COLUMNS": "250"})
    assert skipped.output == "skipped 3 regions of cycle 0 (1, 2, 3); 1 region still asked.\n", skipped.output
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.region_id for r in ledger.asked()] == [later]


def test_skip_refuses_a_file_that_is_no_ledger_and_leaves_it_as_it_was(tmp_path):
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as conn:  # another tool's SQLite file under the name
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.commit()
    before = (tmp_path / "ledger.sqlite").read_bytes()
    refused = CliRunner().invoke(app, ["skip", str(tmp_path)], env={"COLUMNS": "250"})
    assert (refused.exit_code, refused.output) == (
        1, f"error: {tmp_path / 'ledger.sqlite'}: not a label ledger (it holds no schema version)\n")
    assert (tmp_path / "ledger.sqlite").read_bytes() == before  # not given a ledger's tables


def test_skip_says_the_tasks_of_a_label_studio_project_stay_open_there(run_dir):
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.set_meta(PROJECT_META, {"url": "http://127.0.0.1:8080", "id": 3})
    skipped = CliRunner().invoke(app, ["skip", str(run_dir), "--region=1"])
    assert skipped.exit_code == 0, skipped.output
    assert skipped.output == ("skipped 1 region (1); 2 regions still asked.\nTheir tasks stay open in Label Studio "
                              "(http://127.0.0.1:8080/projects/3): a task painted there after this skip, then imported, "
                              "answers its regions all the same.\n")


def test_two_copies_of_a_task_submitted_alike_answer_or_skip_their_regions_once(run_dir, tmp_path):
    skipped_a = [exported_task(task_id, {"image_id": "a", "region_ids": [1, 2]}, truth("a"), names=CLASSES,
                               was_cancelled=True) for task_id in (3, 4)]
    export = write_export(tmp_path / "e.json", task_of(1, "b", truth("b"), [3]), task_of(2, "b", truth("b"), [3]),
                          *skipped_a)  # tasks.json imported twice, each copy submitted (or skipped) alike
    report = import_answers(run_dir, export)
    assert (report.answered, report.skipped, report.void_pixels, report.still_asked) == ([3], [1, 2], 0, 0)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.region_id for r in ledger.answered()] == [3] and [r.region_id for r in ledger.skipped()] == [1, 2]
        assert np.array_equal(ledger.patch(region_by_id(ledger, 3)), crop(truth("b"), B1))
    corrected = truth("b")
    corrected[B1[0]:B1[2], B1[1]:B1[3]] = 1  # a reviewer's fix, made alike in both copies
    export = write_export(tmp_path / "e2.json", painted_at(task_of(1, "b", corrected, [3]), "2099-01-01T00:00:00Z"),
                          painted_at(task_of(2, "b", corrected, [3]), "2099-01-01T00:00:01Z"))
    report = import_answers(run_dir, export)
    assert (report.corrected, report.answered) == ([3], [])
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert (ledger.patch(region_by_id(ledger, 3)) == 1).all()


def test_a_task_skipped_in_label_studio_skips_its_regions_still_asked(run_dir, tmp_path):
    export = write_export(tmp_path / "e.json", task_of(1, "b", truth("b"), [3]),
                          exported_task(2, {"image_id": "a", "region_ids": [1, 2]}, truth("a"), names=CLASSES,
                                        was_cancelled=True))
    report = import_answers(run_dir, export)
    assert (report.answered, report.skipped, report.still_asked) == ([3], [1, 2], 0)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.region_id for r in ledger.skipped()] == [1, 2]
        assert {r.answered_by for r in ledger.skipped()} == {"label-studio"}
        assert label_state(ledger).labelled_pixels == H * W + 100
        assert not (run_dir / "labels" / "region_000001.png").exists()


def test_a_skipped_task_submitted_later_answers_its_regions_and_a_partial_painting_leaves_them_skipped(
        run_dir, tmp_path):
    skipped_task = exported_task(2, {"image_id": "a", "region_ids": [1, 2]}, truth("a"), names=CLASSES,
                                 was_cancelled=True)
    import_answers(run_dir, write_export(tmp_path / "e1.json", skipped_task))
    partial = in_box(truth("a"), (0, 0, 4, 10))  # 40% of A1, nothing of A2
    before = snapshot(run_dir)
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", task_of(2, "a", partial, [1, 2])))
    assert (report.answered, report.unskipped, report.already_imported) == ([], [], 1)
    assert snapshot(run_dir) == before

    reopened = write_export(tmp_path / "e3.json", task_of(2, "a", in_box(truth("a"), A1), [1, 2]))
    result = CliRunner().invoke(app, ["import", str(run_dir), str(reopened)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "answered 1 region (" in result.output
    assert "answered 1 region skipped before (painted since, or skipped by `s4al skip` without --region" in result.output
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [(r.region_id, r.state) for r in ledger.regions(0)] == [(1, "answered"), (2, "skipped"), (3, "asked")]
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(truth("a"), A1))
        assert label_state(ledger).labelled_pixels == H * W + 100
    again = import_answers(run_dir, reopened)
    assert (again.answered, again.already_imported) == ([], 1)


def test_a_task_skipped_in_label_studio_is_timed_by_its_skip_not_by_its_import(run_dir, tmp_path):
    """A task reopened and painted after its skip answers, though the export holding the skip was
    imported after that painting (a download made before it); one painted before the skip does not."""
    skip_a = exported_task(1, {"image_id": "a", "region_ids": [1, 2]}, truth("a"), names=CLASSES, was_cancelled=True)
    skip_b = exported_task(2, {"image_id": "b", "region_ids": [3]}, truth("b"), names=CLASSES, was_cancelled=True)
    for skipped in (skip_a, skip_b):
        skipped["annotations"][0]["updated_at"] = "2026-03-09T10:00:00Z"
    import_answers(run_dir, write_export(tmp_path / "e1.json", skip_a, skip_b))  # imported now, long after 10:00
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert region_by_id(ledger, 1).painted_at == "2026-03-09T10:00:00.000000+00:00"
    painted_a, painted_b = task_of(1, "a", truth("a"), [1, 2]), task_of(2, "b", truth("b"), [3])
    painted_a["annotations"][0]["updated_at"] = "2026-03-09T10:30:00Z"  # reopened and painted after the skip
    painted_b["annotations"][0]["updated_at"] = "2026-03-09T09:00:00Z"  # painted before it: the skip overrules it
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", painted_a, painted_b))
    assert (report.answered, report.unskipped, report.skip_kept) == ([1, 2], [1, 2], [3])
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [(r.region_id, r.state) for r in ledger.regions(0)] == [(1, "answered"), (2, "answered"), (3, "skipped")]
        assert np.array_equal(ledger.patch(region_by_id(ledger, 2)), crop(truth("a"), A2))


def painted_again(mask: Path) -> None:
    """The mask saved a second from now: a file's time comes from the kernel's coarse clock, which
    can lag the skip's time (taken from the precise one) by a tick."""
    os.utime(mask, (time.time() + 1, time.time() + 1))


def test_masks_painted_before_a_skip_leave_it_skipped_and_masks_painted_after_answer_it(run_dir, tmp_path):
    """`s4al skip` overrules the masks that were there before it (imported again, they answer
    nothing), not those painted after it: the mask files' times against the skip's."""
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(truth("a")).save(folder / "a.png")  # answers A1 and A2
    os.utime(folder / "a.png", (time.time() - 3600, time.time() - 3600))  # painted an hour ago
    CliRunner().invoke(app, ["skip", str(run_dir), "--region", "1"])
    report = import_answers(run_dir, folder)
    assert (report.answered, report.unskipped, report.skip_kept) == ([2], [], [1])
    result = CliRunner().invoke(app, ["import", str(run_dir), str(folder)], env={"COLUMNS": "250"})
    assert "1 mask already imported (regions answered or skipped): left alone" in result.output
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [(r.region_id, r.state) for r in ledger.regions(0)] == [(1, "skipped"), (2, "answered"), (3, "asked")]
    painted_again(folder / "a.png")  # saved again as it was (an editor writing every mask anew): the skip stands
    report = import_answers(run_dir, folder)
    assert (report.answered, report.unskipped, report.skip_kept) == ([], [], [1])
    repainted = truth("a")
    repainted[A1[0] + 1, A1[1]] = 2 if repainted[A1[0] + 1, A1[1]] != 2 else 1  # one pixel painted otherwise
    Image.fromarray(repainted).save(folder / "a.png")
    painted_again(folder / "a.png")
    report = import_answers(run_dir, folder)
    assert (report.answered, report.unskipped, report.skip_kept) == ([1], [1], [])
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(repainted, A1))


def test_a_task_whose_regions_were_all_skipped_by_name_after_its_painting_names_them_as_left_skipped(
        run_dir, tmp_path):
    """Every region the task paints was skipped by name after it was painted: the import names them
    (with how to answer them after all), not counts the task as imported before."""
    CliRunner().invoke(app, ["skip", str(run_dir), "--region", "1", "--region", "2"])
    export = write_export(tmp_path / "e.json", painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T11:00:00Z"))
    report = import_answers(run_dir, export, dry_run=True)
    assert (report.answered, report.skip_kept, report.already_imported) == ([], [1, 2], 0)
    result = CliRunner().invoke(app, ["import", str(run_dir), str(export)], env={"COLUMNS": "250"})
    assert "already imported" not in result.output
    assert ("left 2 regions skipped: painted here as when the skip turned them down (skipped after this painting, in "
            "Label Studio or by `s4al skip --region`, or `--withdraw`); to answer one, paint it otherwise in Label "
            "Studio (or in its mask) and import: 1, 2\n") in result.output
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [(r.region_id, r.state) for r in ledger.regions(0)] == [(1, "skipped"), (2, "skipped"), (3, "asked")]
    # the import kept what the skip turned down: the same painting saved after the skip leaves them skipped
    resaved = write_export(tmp_path / "e2.json", painted_at(task_of(1, "a", truth("a"), [1, 2]), "2099-01-01T00:00:00Z"))
    assert import_answers(run_dir, resaved).skip_kept == [1, 2]
    repainted = truth("a")
    repainted[A2[0] + 1, A2[1]:A2[3]] = 0
    report = import_answers(run_dir, write_export(tmp_path / "e3.json", painted_at(task_of(1, "a", repainted, [1, 2]),
                                                                                   "2099-01-01T00:00:01Z")))
    assert (report.answered, report.skip_kept) == ([2], [1])


def test_skip_without_regions_passes_over_answers_painted_before_it_and_not_yet_imported(run_dir, tmp_path):
    """`s4al skip RUN` skips what has no answer yet: a task submitted in Label Studio before it (its
    export not imported then) answers its regions on import; the one nobody painted stays skipped."""
    submitted = painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T11:00:00Z")  # long before the skip
    skipped = CliRunner().invoke(app, ["skip", str(run_dir)])
    assert skipped.output.startswith("skipped 3 regions of cycle 0 (1, 2, 3); 0 regions still asked.\n"), skipped.output
    report = import_answers(run_dir, write_export(tmp_path / "e.json", submitted))
    assert (report.answered, report.unskipped, report.skip_kept) == ([1, 2], [1, 2], [])
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [(r.region_id, r.state) for r in ledger.regions(0)] == [(1, "answered"), (2, "answered"),
                                                                        (3, "skipped")]
        assert np.array_equal(ledger.patch(region_by_id(ledger, 2)), crop(truth("a"), A2))


def test_an_answer_is_taken_back_by_name_and_a_later_painting_alone_answers_its_region_again(run_dir, tmp_path):
    """`s4al skip --withdraw` skips answered regions named: they train no more; the export they were
    answered from stays overruled, a painting made after the withdrawal answers them again."""
    export = write_export(tmp_path / "e1.json", painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T10:00:00Z"))
    import_answers(run_dir, export)
    refused = CliRunner().invoke(app, ["skip", str(run_dir), "--region", "1", "--region", "3"], env={"COLUMNS": "250"})
    assert (refused.exit_code, refused.output) == (1, f"error: region 1 already answered, nothing written; to take "
                                                      f"back its answer: s4al skip {run_dir} --withdraw --region 1\n")
    bare = CliRunner().invoke(app, ["skip", str(run_dir), "--withdraw"], env={"COLUMNS": "250"})
    assert (bare.exit_code, bare.output.splitlines()[-1]) == (2, "Error: Invalid value: --withdraw takes back the "
                                                              "answers of the regions named: give them with --region ID")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [(r.region_id, r.state) for r in ledger.regions(0)] == [(1, "answered"), (2, "answered"), (3, "asked")]
        labelled = label_state(ledger).labelled_pixels
    taken = CliRunner().invoke(app, ["skip", str(run_dir), "--region", "1", "--withdraw"], env={"COLUMNS": "250"})
    assert taken.exit_code == 0, taken.output
    assert taken.output == ("skipped 1 region (1); 1 region still asked.\nwithdrew the answers of 1 region (1): they no "
                            "longer train, from the next cycle on; a painting of one other than its answer, imported, "
                            "answers it again.\n")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [(r.region_id, r.state) for r in ledger.regions(0)] == [(1, "skipped"), (2, "answered"), (3, "asked")]
        assert label_state(ledger).labelled_pixels == labelled - 100  # A1: 10 x 10
    assert import_answers(run_dir, export).skip_kept == [1]  # the painting it was answered from
    # saved again later as it was (a reviewer's star, an Update with no change, a server clock ahead): still withdrawn
    resaved = write_export(tmp_path / "e2.json", painted_at(task_of(1, "a", truth("a"), [1, 2]), "2099-01-01T00:00:00Z"))
    before = stored(run_dir)
    assert import_answers(run_dir, resaved).skip_kept == [1]
    assert stored(run_dir) == before
    repainted = truth("a")
    repainted[A1[0] + 1, A1[1]:A1[3]] = 0
    report = import_answers(run_dir, write_export(tmp_path / "e3.json", painted_at(task_of(1, "a", repainted, [1, 2]),
                                                                                   "2099-01-01T00:00:01Z")))
    assert (report.answered, report.unskipped) == ([1], [1])
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(repainted, A1))


def test_a_withdrawn_answer_stays_withdrawn_from_a_painting_older_than_the_one_withdrawn(run_dir, tmp_path):
    first = write_export(tmp_path / "e1.json", painted_at(task_of(1, "a", truth("a"), [1, 2]), "2026-03-09T10:00:00Z"))
    import_answers(run_dir, first)
    fixed = truth("a")
    fixed[A1[0] + 1, A1[1]:A1[3]] = 0
    report = import_answers(run_dir, write_export(tmp_path / "e2.json", painted_at(task_of(1, "a", fixed, [1, 2]),
                                                                                   "2026-03-09T11:00:00Z")))
    assert report.corrected == [1]
    assert CliRunner().invoke(app, ["skip", str(run_dir), "--region", "1", "--withdraw"]).exit_code == 0
    before = stored(run_dir)
    assert import_answers(run_dir, first).skip_kept == [1]  # the answer before the fix, from before the withdrawal
    assert stored(run_dir) == before


def test_an_answer_is_not_taken_back_while_a_cycle_has_trained_part_way_with_it(run_dir, tmp_path):
    import_answers(run_dir, write_export(tmp_path / "e.json", task_of(1, "a", truth("a"), [1, 2])))
    with Ledger(run_dir / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        for phase in ("train", "acquire", "answer", "done"):
            phases.set_phase(0, phase)
        phases.set_phase(1, "train")  # cycle 1 trains with region 1's answer; killed after its first checkpoint
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "cycle_1.pt").write_bytes(b"")
    before = answers_state(run_dir)
    result = CliRunner().invoke(app, ["skip", str(run_dir), "--region", "1", "--withdraw"], env={"COLUMNS": "250"})
    assert (result.exit_code, result.output) == (
        1, f"error: cycle 1 has trained part-way with the answers of 1: resume the run until it has trained (s4al run "
           f"--resume {run_dir}), then withdraw them; nothing written\n")
    assert answers_state(run_dir) == before


def test_an_indexed_mask_with_a_transparent_background_leaves_it_unpainted(run_dir, tmp_path):
    """Car's colour at index 1 over A1, index 0 transparent elsewhere (as an editor saves a few colours
    on a transparent background): A1 is car, A2 is unpainted, so left asked."""
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.set_meta(COLOURS_META, [[70, 130, 180], [128, 64, 128], [0, 0, 142]])  # sky, road, car
    indices = np.zeros((H, W), np.uint8)
    y0, x0, y1, x1 = A1
    indices[y0:y1, x0:x1] = 1
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([0, 0, 0, 0, 0, 142])
    folder = tmp_path / "masks"
    folder.mkdir()
    mask.save(folder / "a.png", transparency=0)
    report = import_answers(run_dir, folder)
    assert (report.answered, report.not_answered) == ([1], {2: 0.0})
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert (ledger.patch(region_by_id(ledger, 1)) == 2).all()


def test_two_masks_of_one_image_alike_count_once_and_painted_two_ways_are_refused(run_dir, tmp_path):
    other_run = shutil.copytree(run_dir, tmp_path / "other_run")
    alike = tmp_path / "alike"
    alike.mkdir()
    for name in ("a.png", "a.PNG"):
        Image.fromarray(truth("a")).save(alike / name)
        os.utime(alike / name, (time.time() - 3600, time.time() - 3600))  # painted before the skips below
    for run in (run_dir, other_run):
        CliRunner().invoke(app, ["skip", str(run), "--region", "1"])
    report = import_answers(run_dir, alike)
    assert (report.answered, report.skip_kept, report.void_pixels, report.read) == ([2], [1], 0, 2)
    painted_again(alike / "a.PNG")  # this copy, after the skip: it answers region 1, the other is older
    report = import_answers(other_run, alike)
    assert (sorted(report.answered), report.unskipped, report.skip_kept) == ([1, 2], [1], [])
    assert report.void_pixels == 10  # A1 crosses the void top row; A2 counted once
    two_ways = tmp_path / "two_ways"
    two_ways.mkdir()
    Image.fromarray(truth("b")).save(two_ways / "b.png")
    Image.fromarray(truth("a")).save(two_ways / "b.PNG")
    before = snapshot(run_dir)
    with pytest.raises(AnswerError, match=r"b\.(png|PNG): region 3 answered or skipped otherwise in .*b\.(png|PNG): "
                                          r"delete one of the two masks$"):
        import_answers(run_dir, two_ways)
    assert snapshot(run_dir) == before


def test_an_answer_to_a_skipped_region_while_a_cycle_is_part_trained_is_refused(run_dir, tmp_path):
    with Ledger(run_dir / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        ledger.skip([1], by="s4al skip")
        for phase in ("train", "acquire", "answer", "done"):
            phases.set_phase(0, phase)
        phases.set_phase(1, "train")  # cycle 1 trains without region 1; killed after its first checkpoint
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "cycle_1.pt").write_bytes(b"")
    before = snapshot(run_dir)
    with pytest.raises(AnswerError, match=r"e.json: answers region 1 skipped before, while cycle 1 has trained "
                                          r"part-way with the labels as they were"):
        import_answers(run_dir, write_export(tmp_path / "e.json", task_of(1, "a", truth("a"), [1, 2])))
    assert snapshot(run_dir) == before


def in_box(labels, box):
    """`labels` inside `box`, unpainted (255) elsewhere: what a person paints in one region."""
    y0, x0, y1, x1 = box
    painted = np.full((H, W), 255, np.uint8)
    painted[y0:y1, x0:x1] = labels[y0:y1, x0:x1]
    return painted


def cycle_task(task_id, image_id, labels, region_ids, cycle):
    data = {"image": "data:...", "image_id": image_id, "region_ids": region_ids, "cycle": cycle}
    return exported_task(task_id, data, labels, names=CLASSES)


A3 = (10, 0, 20, 10)  # asked in cycle 1, in image 'a' again
ASKED_A1 = Region(1, "a", 0, A1, "entropy", 1.0, "asked", None, "2024-01-01", None, None)


def test_one_label_studio_project_across_cycles_imports_its_full_export_every_time(run_dir, tmp_path):
    cycle_0 = [cycle_task(1, "a", truth("a"), [1, 2], 0), cycle_task(2, "b", truth("b"), [3], 0)]
    assert import_answers(run_dir, write_export(tmp_path / "e0.json", *cycle_0)).answered == [1, 2, 3]
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        (region_4,) = ledger.ask(1, [("a", A3, "entropy", 0.3)])
    cycle_1 = cycle_task(3, "a", in_box(truth("a")[::-1].copy(), A3), [region_4], 1)  # image 'a', a second task
    export = write_export(tmp_path / "e1.json", *cycle_0, cycle_1)

    report = import_answers(run_dir, export)
    assert (report.answered, report.already_imported, report.ignored_pixels) == ([4], 2, {})
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert np.array_equal(ledger.patch(region_by_id(ledger, 4)), crop(truth("a")[::-1], A3))
        assert np.array_equal(ledger.patch(region_by_id(ledger, 1)), crop(truth("a"), A1))  # cycle 0's answer kept
    before = snapshot(run_dir)
    again = import_answers(run_dir, export)
    assert (again.answered, again.already_imported, again.still_asked) == ([], 3, 0)
    assert snapshot(run_dir) == before


def test_rectangles_drawn_by_hand_are_reported_and_ignored(run_dir, tmp_path):
    item = task_of(7, "b", truth("b"), [3])
    ours = {"id": "region_3", "type": "rectanglelabels", "from_name": "asked", "to_name": "image",
            "original_width": W, "original_height": H, "readonly": True,
            "value": {"x": 100 * 10 / W, "y": 0, "width": 100 * 10 / W, "height": 50, "rectanglelabels": ["asked region"]}}
    drawn = {**ours, "id": "x1", "readonly": False, "value": {**ours["value"], "x": 0.0, "y": 60.0}}
    item["annotations"][0]["result"] += [ours, drawn]
    report = import_answers(run_dir, write_export(tmp_path / "e.json", item))
    assert report.answered == [3] and list(report.hand_drawn.values()) == [1]
    assert "task 7" in next(iter(report.hand_drawn))


def asked_region(run, region_id, **changed):
    with Ledger(run / "ledger.sqlite", readonly=True) as ledger:
        return dataclasses.replace(region_by_id(ledger, region_id), **changed)


def query_task(regions):
    """The task `s4al query` makes for `regions` (of one image), the model predicting class 0."""
    return task(np.zeros((H, W, 3), np.uint8), regions, np.zeros((H, W), np.uint8), CLASS_SET)


def answered_task(task_id, regions, labels):
    """The export of the task made for `regions`, painted with `labels`: Label Studio starts the
    annotation from the task's prediction, so it holds the asked-region rectangles."""
    made = query_task(regions)
    item = exported_task(task_id, made["data"], labels, names=CLASSES)
    item["annotations"][0]["result"] += asked_rectangles(made)
    return item


def test_the_answers_of_another_run_are_refused_whole_where_an_asked_region_lies_elsewhere(run_dir, tmp_path):
    ours = answered_task(1, [asked_region(run_dir, 1), asked_region(run_dir, 2)], truth("a"))
    theirs = answered_task(2, [asked_region(run_dir, 3, box=(10, 0, 20, 10))], truth("b"))  # another run's region 3
    export = write_export(tmp_path / "e.json", ours, theirs)
    before = snapshot(run_dir)
    with pytest.raises(AnswerError) as refused:
        import_answers(run_dir, export)
    assert str(refused.value) == (f"answers refused, nothing written: {export}: task 2 (image 'b'): region 3 is at "
                                  "(10, 0, 20, 10) in this task, but this run asked region 3 at (0, 10, 10, 20): "
                                  "answers of another run?")
    assert snapshot(run_dir) == before


def one_pixel_right(value):
    value["x"] += 100 / W


def one_pixel_taller(value):
    value["height"] += 100 / H


def percent_to_4_decimals(value):  # B1's x0 = 10 px of 30 becomes 33.3333%, 9.99999 px
    value.update({key: round(value[key], 4) for key in ("x", "y", "width", "height")})


@pytest.mark.parametrize("move, refused_box", [
    (one_pixel_right, "(0, 11, 10, 21)"), (one_pixel_taller, "(0, 10, 11, 20)"), (percent_to_4_decimals, None)])
def test_an_asked_rectangle_is_this_runs_region_to_the_nearest_pixel(run_dir, tmp_path, move, refused_box):
    item = answered_task(7, [asked_region(run_dir, 3)], truth("b"))
    (rectangle,) = [r for r in item["annotations"][0]["result"] if r["from_name"] == "asked"]
    move(rectangle["value"])
    export = write_export(tmp_path / "e.json", item)
    if refused_box is None:
        report = import_answers(run_dir, export)
        assert (report.answered, report.hand_drawn) == ([3], {})  # the asked rectangle is not drawn by hand
        return
    with pytest.raises(AnswerError, match=re.escape(f"region 3 is at {refused_box} in this task, but this run asked "
                                                    "region 3 at (0, 10, 10, 20): answers of another run?")):
        import_answers(run_dir, export)


@pytest.mark.parametrize("key, value", [("x", "NaN"), ("width", 1e308), ("y", None)])
def test_an_asked_rectangle_without_a_finite_box_is_refused_naming_the_task(run_dir, tmp_path, key, value):
    item = answered_task(7, [asked_region(run_dir, 3)], truth("b"))
    (rectangle,) = [r for r in item["annotations"][0]["result"] if r["from_name"] == "asked"]
    rectangle["value"][key] = value
    with pytest.raises(AnswerError, match=re.escape(f"e.json: task 7 (image 'b'): rectangle {rectangle['id']} has "
                                                    "no readable box")):
        import_answers(run_dir, write_export(tmp_path / "e.json", item))


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
        region = region_by_id(ledger, 3)
        assert np.array_equal(ledger.patch(region), crop(truth("b"), B1)) and region.answered_by == "png-folder"


def test_each_mask_of_a_png_folder_answers_the_regions_of_its_own_image_only(run_dir, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    for image_id in ("a", "b"):
        Image.fromarray(truth(image_id)).save(folder / f"{image_id}.png")
    report = import_answers(run_dir, folder)
    assert (report.answered, report.still_asked, report.void_pixels) == ([1, 2, 3], 0, 10)  # A1 holds 10 void pixels
    # painted pixels (all but one void row) less those inside the image's own boxes: A1 90 and A2 100, B1 100
    assert report.ignored_pixels == {"a": H * W - W - 190, "b": H * W - W - 100}
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        for region_id, image_id, box in ((1, "a", A1), (2, "a", A2), (3, "b", B1)):
            assert np.array_equal(ledger.patch(region_by_id(ledger, region_id)), crop(truth(image_id), box))


def test_a_png_folder_reads_masks_of_any_suffix_case_and_names_the_other_files_it_ignores(run_dir, tmp_path):
    folder = png_folder(tmp_path, "b.PNG", in_box(truth("b"), B1))
    with_files(folder, ".DS_Store", "._b.PNG", *(f"note{k}.txt" for k in range(6)))  # ._b.PNG: macOS's, beside b.PNG
    result = CliRunner().invoke(app, ["import", str(run_dir), str(folder)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == ["ignored 8 files, not .png masks: .DS_Store, ._b.PNG, note0.txt, "
                                              "note1.txt, note2.txt (and 3 more)"]
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert [r.region_id for r in ledger.answered()] == [3]
        assert np.array_equal(ledger.patch(region_by_id(ledger, 3)), crop(truth("b"), B1))


def test_import_is_refused_at_once_while_another_process_holds_the_run_folder(run_dir, tmp_path):
    imported = write_export(tmp_path / "e.json", task_of(1, "b", truth("b"), [3]))
    import_answers(run_dir, imported)  # importing it again has nothing to write
    new = write_export(tmp_path / "new.json", task_of(2, "a", truth("a"), [1, 2]))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from s4al.run_folder import RunFolder
        RunFolder(pathlib.Path({str(run_dir)!r})).lock()
        print("locked", flush=True)
        time.sleep(60)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(run_dir)
        for answers in (imported, new):
            result = CliRunner().invoke(app, ["import", str(run_dir), str(answers)])
            assert result.exit_code == 1
            assert result.output.startswith(f"error: {run_dir}: in use by process {holder.pid} on {socket.gethostname()}; "
                                            "wait for it to finish")
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


def test_importing_the_same_export_again_changes_nothing_and_says_so(run_dir, tmp_path):
    export = write_export(tmp_path / "e.json", task_of(1, "b", truth("b"), [3]))
    import_answers(run_dir, export)
    before = snapshot(run_dir)
    report = import_answers(run_dir, export)
    assert (report.answered, report.already_imported, report.still_asked) == ([], 1, 2)
    assert snapshot(run_dir) == before


def png_folder(tmp, name=None, array=None):
    folder = tmp / "masks"
    folder.mkdir()
    if name:
        Image.fromarray(array).save(folder / name)
    return folder


def with_files(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"not a mask")
    return folder


def linked(link, target):
    """A link to `target`; returns the folder it is in."""
    link.symlink_to(target)
    return link.parent


def export(tmp, *tasks):
    return write_export(tmp / "e.json", *tasks)


def painted_outside_the_asked_regions():
    labels = np.full((H, W), 255, np.uint8)
    labels[15:, :10] = 1
    return labels


def huge_brush(item):
    """A brush result claiming a 300000 x 300000 image: 90 GB if allocated before the size is checked."""
    item["annotations"][0]["result"][0].update(original_height=300_000, original_width=300_000)
    return item


UNKNOWN_CLASS_ID = np.where(truth("a") == 2, 5, truth("a")).astype(np.uint8)

REFUSED_EXPORTS = {
    "unknown image": (
        lambda tmp: export(tmp, task_of(5, "zebra", truth("a"), [1])),
        r"e.json: task 5 \(image 'zebra'\): image 'zebra' is not one of this run's train images"),
    "unknown class": (
        lambda tmp: export(tmp, exported_task(5, {"image_id": "a", "region_ids": [1]}, truth("a"),
                                              names=["sky", "road", "bus"])),
        r"e.json: task 5 \(image 'a'\): unknown class 'bus' \(known: .*\); repaint the task with the run's classes in "
        r"Label Studio"),
    "wrong size": (
        lambda tmp: export(tmp, task_of(5, "a", np.ones((H, W + 2), np.uint8), [1])),
        r"task 5 \(image 'a'\): brush region brush\d: mask is 20x32, the image is 20x30"),
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
        r"task 2 \(image 'zebra'\): image 'zebra' is not one of this run's train images"),
    "a region answered by two tasks two ways": (
        lambda tmp: export(tmp, task_of(1, "b", truth("b"), [3]), task_of(2, "b", truth("a"), [3])),
        r"task 2 \(image 'b'\): region 3 answered or skipped otherwise in task 1 \(image 'b'\): "
        r"delete one of the two tasks in Label Studio \(tasks imported twice\?\)"),
    "two regions answered by two tasks two ways, said once": (
        lambda tmp: export(tmp, task_of(1, "a", truth("a"), [1, 2]), task_of(2, "a", truth("b"), [1, 2])),
        r"answers refused, nothing written: \S+: task 2 \(image 'a'\): regions 1, 2 answered or skipped otherwise in "
        r"task 1 \(image 'a'\): delete one of the two tasks in Label Studio \(tasks imported twice\?\)$"),
    "a region answered by one task and skipped by another": (
        lambda tmp: export(tmp, task_of(1, "b", truth("b"), [3]),
                           exported_task(2, {"image_id": "b", "region_ids": [3]}, truth("b"), names=CLASSES,
                                         was_cancelled=True)),
        r"task 2 \(image 'b'\): region 3 answered or skipped otherwise in task 1 \(image 'b'\)"),
    "a region of another cycle": (
        lambda tmp: export(tmp, cycle_task(5, "b", truth("b"), [3], 1)),
        r"task 5 \(image 'b'\): region 3 was asked in cycle 0, the task is of cycle 1"),
    "a region id that is a bool": (
        lambda tmp: export(tmp, task_of(5, "a", truth("a"), [True])),
        r"task 5 \(image 'a'\): data.region_ids must be a list of region ids, got \[True\]"),
    "a JSON-MIN export": (
        lambda tmp: written(tmp / "e.json", json.dumps([{"id": 5, "image": "data:...", "image_id": "a",
                                                         "region_ids": [1], "label": []}])),
        r"task 5: .*JSON-MIN export; use the JSON export"),
    "a brush sized far beyond the image": (
        lambda tmp: export(tmp, huge_brush(task_of(5, "a", truth("a"), [1]))),
        r"task 5 \(image 'a'\): brush region brush0: mask is 300000x300000, the image is 20x30"),
    "corrupt JSON": (
        lambda tmp: written(tmp / "e.json", '[{"id": 1, "data": {"image_id": "a"'),
        r"e.json: not a readable JSON file"),
    "no such file": (lambda tmp: tmp / "missing.json", "missing.json: no such file or folder"),
    "PNG of an unknown image": (
        lambda tmp: png_folder(tmp, "zebra.png", truth("a")),
        r"zebra.png: image 'zebra' is not one of this run's train images$"),
    "PNG named in another case than its image": (
        lambda tmp: png_folder(tmp, "A.png", truth("a")),
        r"A.png: image 'A' is not one of this run's train images \(names are case-sensitive: this run has 'a'\)"),
    "PNG with an unknown class id": (
        lambda tmp: png_folder(tmp, "a.png", UNKNOWN_CLASS_ID), r"a.png: unknown class ids \[5\]"),
    "PNG of the wrong size": (
        lambda tmp: png_folder(tmp, "a.png", np.ones((H + 1, W), np.uint8)),
        r"a.png: mask is 21x30, image 'a' is 20x30 \(HxW\) in this run, as its query package's images/ show it \(a run "
        r"with dataset.resize holds its images resized\)"),
    "colour PNG": (
        lambda tmp: png_folder(tmp, "a.png", np.zeros((H, W, 3), np.uint8)),
        r"a.png: painted in colours, but this run keeps no class colours \(it was made before s4al kept them\): save "
        r"it as a greyscale PNG of class ids$"),
    "empty folder": (png_folder, "no .png masks"),
    "JPEG and TIFF beside the PNG masks": (
        lambda tmp: with_files(png_folder(tmp, "b.png", truth("b")), "a.jpg", "c.TIFF", "notes.txt"),
        r"masks: masks must be lossless PNG \(JPEG changes class ids at the edges\), not a.jpg, c.TIFF; "
        r"save them as IMAGE_ID.png$"),
    "Label Studio's brush-label PNG export, unzipped": (
        lambda tmp: png_folder(tmp, "task-1-annotation-1-by-1-label-car-0.png", truth("a")),
        r"masks: task-1-annotation-1-by-1-label-car-0.png: Label Studio's brush-label PNG export \(a file per class "
        r"per annotation\), not masks named IMAGE_ID.png; import the project's JSON export \(Export -> JSON\) "
        r"instead$"),
    "a broken link among the PNG masks": (
        lambda tmp: linked(png_folder(tmp, "b.png", truth("b")) / "a.png", tmp / "gone.png"),
        r"masks/a.png: a link to .*/gone.png, which does not exist; mend the link or remove it$"),
    "one PNG instead of its folder": (
        lambda tmp: png_folder(tmp, "b.png", truth("b")) / "b.png",
        r"masks/b.png: one PNG; ANSWERS is a folder of IMAGE_ID.png masks or a Label Studio JSON export: "
        r"give its folder, .*/masks$"),
    "the tasks file of s4al query": (
        lambda tmp: write_export(tmp / "tasks.json", query_task([ASKED_A1])),
        r"tasks.json: no task has an 'annotations' list: a tasks file \(as the tasks.json of s4al query\), not "
        r"Label Studio's export; export the project \(Export -> JSON\) and import that$"),
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
    with pytest.raises(RunFolderError, match=f"^{tmp_path / 'nowhere'}: not a run folder \\(no ledger.sqlite\\)"):
        import_answers(tmp_path / "nowhere", tmp_path)
    assert not (tmp_path / "nowhere").exists()
