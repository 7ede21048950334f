"""The human-in-the-loop cycle on the synthetic dataset: a run with an external annotator asks and
stops, `query` packages the questions, a Label Studio export painted with the ground truth (by Label
Studio's own RLE encoder) is imported, and `run --resume` finishes the run."""

import csv
import json
import shutil

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import label_state, ledger_of, region_by_id, tiny_config
from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import PROJECT_META, Ledger
from s4al.active.phases import CyclePhases
from s4al.annotation import package as package_module
from s4al.annotation.commands import import_answers_command, query, skip
from s4al.annotation.label_studio import ASKED_COLOUR, labelling_config
from s4al.data import build_dataset
from test_annotation_label_studio import asked_rectangles, decoded, exported_task

app = typer.Typer()
app.command()(query)
app.command(name="import")(import_answers_command)
app.command()(skip)
runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # no line breaks in the run command's rich output


def external_config():
    return tiny_config(
        active={"annotator": "external", "final_cycle_epoch_multiplier": 1.0},
        train={"epochs": 1, "iters_per_epoch": 1, "device": "cpu"},
        ssl={"cold_start_epochs": 0},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run whose cycle 0 has trained but not asked yet (phase 'acquire')."""
    run = tmp_path_factory.mktemp("trained") / "run"
    ActiveLearningRun(run, external_config())._train(0)
    return run


@pytest.fixture
def run_dir(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def invoke(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_query_asks_label_studio_answers_with_ground_truth_and_the_run_finishes(run_dir, tmp_path):
    output = invoke("query", run_dir, "--device", "cpu")
    with ledger_of(run_dir) as ledger, CyclePhases(ledger) as phases:
        asked = ledger.asked()
        assert phases.phase(0) == "answer" and asked
    assert f"{len(asked)} asked regions" in output

    cfg = external_config()
    train_set = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    label_of = {train_set.image_id(i): train_set.load(i).label for i in range(len(train_set))}
    tasks_file = run_dir / "queries" / "cycle_0" / "tasks.json"
    refused = runner.invoke(app, ["import", str(run_dir), str(tasks_file)])  # the tasks, not the export
    assert refused.exit_code == 1 and refused.output.startswith(
        f"error: {tasks_file}: no task has an 'annotations' list: a tasks file (as the tasks.json of s4al query)")
    tasks = json.loads(tasks_file.read_text())
    export = [exported_task(n, t["data"], label_of[t["data"]["image_id"]], train_set.classes.names)
              for n, t in enumerate(tasks, start=1)]
    for item, made in zip(export, tasks):  # Label Studio starts the annotation from the prediction's rectangles
        item["annotations"][0]["result"] += asked_rectangles(made)
    (tmp_path / "export.json").write_text(json.dumps(export))
    output = invoke("import", run_dir, tmp_path / "export.json")
    assert f"answered {len(asked)} regions (label-studio)" in output and "0 regions still asked" in output
    assert "drawn by hand" not in output  # the asked rectangles are where the ledger has their regions

    summaries = ActiveLearningRun(run_dir).run()
    assert [s["cycle"] for s in summaries] == [0, 1]
    with ledger_of(run_dir) as ledger, CyclePhases(ledger) as phases:
        assert phases.phase(1) == "done" and ledger.asked() == []
        assert [r.region_id for r in ledger.answered()] == [r.region_id for r in asked]
        for region in ledger.answered():
            y0, x0, y1, x1 = region.box
            assert region.answered_by == "label-studio"
            assert np.array_equal(ledger.patch(region), label_of[region.image_id][y0:y1, x0:x1])
    for item in export:  # a reviewer repaints every task after the run has finished
        for result in item["annotations"][0]["result"]:
            if result["type"] == "brushlabels":
                result["value"]["brushlabels"] = [train_set.classes.names[0]]
        item["annotations"][0]["updated_at"] = "2030-01-01T00:00:00Z"
    (tmp_path / "reviewed.json").write_text(json.dumps(export))
    output = runner.invoke(app, ["import", str(run_dir), str(tmp_path / "reviewed.json")], env=WIDE).output
    assert "(the new answer replaces the earlier one for the training to come, once the run is given cycle 2)" in output


def ground_truth_export(run_dir, path):
    """The export of a project holding the run's query package, every task painted with the ground truth."""
    cfg = external_config()
    train_set = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    label_of = {train_set.image_id(i): train_set.load(i).label for i in range(len(train_set))}
    tasks = json.loads((run_dir / "queries" / "cycle_0" / "tasks.json").read_text())
    export = [exported_task(n, t["data"], label_of[t["data"]["image_id"]], train_set.classes.names)
              for n, t in enumerate(tasks, start=1)]
    path.write_text(json.dumps(export))
    return path


def test_the_export_of_a_twin_runs_project_is_refused_though_it_asks_the_same_regions(run_dir, tmp_path):
    """Same config, seed and data in another folder: the same images, boxes and region ids; its
    tasks carry its run id, so its answers never land in this run as corrections or answers."""
    twin = tmp_path / "twin" / "run"
    ActiveLearningRun(twin, external_config())._train(0)
    invoke("query", run_dir, "--device", "cpu")
    invoke("query", twin, "--device", "cpu")
    with ledger_of(run_dir) as ledger, ledger_of(twin) as twin_ledger:
        assert [(r.image_id, r.box) for r in ledger.asked()] == [(r.image_id, r.box) for r in twin_ledger.asked()]
    before = (run_dir / "ledger.sqlite").read_bytes()
    export = ground_truth_export(twin, tmp_path / "twin_export.json")
    refused = runner.invoke(app, ["import", str(run_dir), str(export)], env=WIDE)
    assert refused.exit_code == 1 and "a task of another run (run id " in refused.output
    assert "import the export of this run's own project" in refused.output
    assert (run_dir / "ledger.sqlite").read_bytes() == before
    output = invoke("import", twin, export)  # its own run takes it
    assert "0 regions still asked" in output


def test_a_run_with_an_external_annotator_stops_after_asking_and_query_packages_the_questions(run_dir, tmp_path):
    ActiveLearningRun(run_dir).run()
    with ledger_of(run_dir) as ledger, CyclePhases(ledger) as phases:
        asked = ledger.asked()
        assert phases.phase(0) == "answer" and phases.last_cycle() == 0 and asked
    out = tmp_path / "package"
    invoke("query", run_dir, "--out", out, "--device", "cpu")
    with ledger_of(run_dir) as ledger:
        assert ledger.asked() == asked  # a second query asks nothing new

    active_run = ActiveLearningRun(run_dir)
    classes = active_run.train_set.classes
    assert (out / "labelling_config.xml").read_text() == labelling_config(classes)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [int(row["region_id"]) for row in rows] == [r.region_id for r in asked]
    assert [entry["box"] for entry in manifest["regions"]] == [list(r.box) for r in asked]
    tasks = {t["data"]["image_id"]: t for t in json.loads((out / "tasks.json").read_text())}
    assert set(tasks) == {r.image_id for r in asked}

    for region, entry in zip(asked, manifest["regions"]):
        y0, x0, y1, x1 = region.box
        image = np.asarray(Image.open(out / entry["image"]))
        assert np.array_equal(image, active_run.train_set.load(active_run.index_of[region.image_id]).image)
        outline = np.zeros(image.shape[:2], dtype=bool)
        outline[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = True
        outline[y0:y1, x0:x1] = False
        assert (np.asarray(Image.open(out / entry["overlay"]))[outline] == ASKED_COLOUR).all()
        # the brush pre-annotation inside the box holds the classes the manifest lists
        brushes = [r for r in tasks[region.image_id]["predictions"][0]["result"] if r["type"] == "brushlabels"]
        counts = {b["value"]["brushlabels"][0]: int(decoded(b)[y0:y1, x0:x1].sum()) for b in brushes}
        assert {name: n for name, n in counts.items() if n} == entry["predicted"]
        assert sum(entry["predicted"].values()) == (y1 - y0) * (x1 - x0)


def test_query_refuses_a_run_whose_cycle_has_not_trained(tmp_path):
    ActiveLearningRun(tmp_path / "run", external_config())
    result = runner.invoke(app, ["query", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {tmp_path / 'run'}: cycle 0 has not finished training; continue it")


def test_skip_on_a_folder_that_is_not_a_run_folder_is_an_error_naming_it(tmp_path):
    result = runner.invoke(app, ["skip", str(tmp_path)])
    assert (result.exit_code, result.output) == (1, f"error: {tmp_path}: not a run folder (no ledger.sqlite)\n")


def test_import_refuses_a_bad_file_with_a_message_and_a_failing_exit_code(run_dir, tmp_path):
    (tmp_path / "export.json").write_text('[{"id": 3, "annotations": [')
    before = (run_dir / "ledger.sqlite").read_bytes()
    result = runner.invoke(app, ["import", str(run_dir), str(tmp_path / "export.json")])
    assert result.exit_code == 1 and "export.json: not a readable JSON file" in result.output
    assert (run_dir / "ledger.sqlite").read_bytes() == before


def test_resume_with_unanswered_regions_says_how_to_go_on_and_skipping_them_lets_the_run_continue(run_dir, tmp_path):
    from s4al.cli import app as s4al

    ActiveLearningRun(run_dir).run()
    with ledger_of(run_dir) as ledger:
        asked = ledger.asked()
        first_image = asked[0].image_id
        size = ledger.image_size(first_image)
    cfg = external_config()
    train_set = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    masks = tmp_path / "masks"
    masks.mkdir()
    label = train_set.load(train_set.image_ids().index(first_image)).label
    assert label.shape == size
    Image.fromarray(label).save(masks / f"{first_image}.png")
    answered = [r.region_id for r in asked if r.image_id == first_image]
    assert f"answered {len(answered)} regions (png-folder)" in invoke("import", run_dir, masks)

    waiting = runner.invoke(s4al, ["run", "--resume", str(run_dir)], env=WIDE)
    assert waiting.exit_code == 0, waiting.output
    left = len(asked) - len(answered)
    told = " ".join(waiting.output.split())
    assert f"{left} regions asked, waiting for answers" in told
    assert f"s4al skip {run_dir}" in told and f"s4al import {run_dir}" in told
    assert f"{left} waiting" in told  # cycle 0's row in the table, not an empty table
    with ledger_of(run_dir) as ledger, CyclePhases(ledger) as phases:
        assert phases.phase(0) == "answer"  # nothing moved on

    skipped = runner.invoke(s4al, ["skip", str(run_dir)])
    assert skipped.exit_code == 0 and f"skipped {left} regions" in skipped.output and "0 regions still asked" in skipped.output
    finished = runner.invoke(s4al, ["run", "--resume", str(run_dir)], env=WIDE)
    assert finished.exit_code == 0, finished.output
    with ledger_of(run_dir) as ledger, CyclePhases(ledger) as phases:
        assert phases.phase(1) == "done"
        assert [r.region_id for r in ledger.answered()] == answered
        assert len(ledger.skipped()) == left
        initial = sum(r.height * r.width for r in ledger.images() if r.initial)
        assert label_state(ledger).labelled_pixels == initial + sum(r.shape[0] * r.shape[1] for r in ledger.answered())
    bought = json.loads((run_dir / "cycles" / "cycle_0.json").read_text())["bought"]
    assert (bought["regions"], bought["skipped_regions"]) == (len(answered), left)  # skipped ones were not bought


def test_skip_refuses_an_answered_region_and_changes_nothing(run_dir):
    from s4al.cli import app as s4al

    ActiveLearningRun(run_dir).run()
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        first, second = ledger.asked()[:2]
        ledger.answer(first.region_id, np.zeros(first.shape, np.uint8), by="oracle")
    refused = runner.invoke(s4al, ["skip", str(run_dir), "--region", str(first.region_id), "--region", str(second.region_id)])
    assert refused.exit_code == 1 and (f"region {first.region_id} already answered, nothing written; to take back its "
                                       f"answer: s4al skip {run_dir} --withdraw --region {first.region_id}"
                                       in " ".join(refused.output.split()))
    with ledger_of(run_dir) as ledger:
        assert region_by_id(ledger, second.region_id).state == "asked"
    done = runner.invoke(s4al, ["skip", str(run_dir), "--region", str(second.region_id)])
    assert done.exit_code == 0 and f"skipped 1 region ({second.region_id})" in done.output


def test_a_new_query_removes_the_earlier_packages_images_no_longer_asked_and_keeps_other_files(run_dir, tmp_path):
    out = tmp_path / "package"
    invoke("query", run_dir, "--device", "cpu", "--out", out)
    (out / "images" / "notes.png").write_bytes(b"the annotator's own file")
    with ledger_of(run_dir) as ledger:
        image_id = ledger.asked()[0].image_id
        done = [r.region_id for r in ledger.asked() if r.image_id == image_id]
    invoke("skip", run_dir, *[arg for region_id in done for arg in ("--region", region_id)])
    assert (out / "images" / f"{image_id}.png").exists()
    invoke("query", run_dir, "--device", "cpu", "--out", out)
    with ledger_of(run_dir) as ledger:
        asked = sorted({r.image_id for r in ledger.asked()})
    for folder in ("images", "overlays"):
        assert sorted(p.stem for p in (out / folder).glob("*.png") if p.stem != "notes") == asked
    assert (out / "images" / "notes.png").read_bytes() == b"the annotator's own file"
    assert image_id not in {t["data"]["image_id"] for t in json.loads((out / "tasks.json").read_text())}


def test_a_query_that_fails_part_way_leaves_the_earlier_package_files_whole(run_dir, monkeypatch):
    invoke("query", run_dir, "--device", "cpu")
    package = run_dir / "queries" / "cycle_0"
    before = {name: (package / name).read_bytes() for name in ("tasks.json", "manifest.json", "manifest.csv")}
    made, task = [], package_module.task

    def failing_task(*args, **kwargs):  # as a Ctrl-C or a full disk would, after the first image
        if made:
            raise KeyboardInterrupt
        made.append(task(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(package_module, "task", failing_task)
    with pytest.raises(KeyboardInterrupt), ActiveLearningRun(run_dir) as active_run:
        package_module.write_query_package(active_run, package)
    assert {name: (package / name).read_bytes() for name in before} == before
    assert not list(package.glob(".*.tmp"))


def test_temp_files_of_a_query_killed_as_it_wrote_are_removed_by_the_next(run_dir):
    package = run_dir / "queries" / "cycle_0"
    (package / "images").mkdir(parents=True)
    strays = [package / ".tasks.json.a1b2.tmp", package / "images" / ".im_0001.png.c3.tmp"]
    kept = [package / ".notes.txt.d4.tmp"]  # not a file of the package's
    for path in strays + kept:
        path.write_bytes(b"half a file")
    invoke("query", run_dir, "--device", "cpu")
    assert [path.exists() for path in strays + kept] == [False] * len(strays) + [True]


def test_a_plain_query_of_a_run_with_a_label_studio_project_points_at_it_not_at_a_second_upload(run_dir):
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.set_meta(PROJECT_META, {"url": "http://127.0.0.1:8080", "id": 7})
    output = " ".join(invoke("query", run_dir, "--device", "cpu").split())
    assert (f"Label Studio: this run's project is http://127.0.0.1:8080/projects/7; send it these tasks with s4al "
            f"query {run_dir} --label-studio http://127.0.0.1:8080 (importing tasks.json there by hand as well would "
            "give each region two tasks)") in output
    assert "import tasks.json into the run's one project" not in output


def test_query_into_a_file_is_an_error_naming_it(run_dir, tmp_path):
    taken = tmp_path / "package"
    taken.write_text("not a folder")
    result = runner.invoke(app, ["query", str(run_dir), "--device", "cpu", "--out", str(taken)])
    assert (result.exit_code, result.output) == (1, f"error: {taken}: exists and is not a folder; give a folder for the output\n")


def own_files(folder, names):
    """Files of the user's own, each holding its name: what a query must neither overwrite nor remove."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(f"the user's own {name}".encode())
    return {name: (folder / name).read_bytes() for name in names}


def test_a_query_into_a_folder_holding_images_no_query_wrote_is_refused_and_leaves_them(run_dir, tmp_path):
    with ledger_of(run_dir) as ledger:
        names = sorted(f"{record.image_id}.png" for record in ledger.images())  # asked or not, every image of the run
    out = tmp_path / "my_images"
    before = own_files(out / "images", names)
    result = runner.invoke(app, ["query", str(run_dir), "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {out}: holds images/{names[0]}, ")
    assert result.output.endswith(" but no .s4al-query-package.json (the record of the files a query package "
                                  "wrote), so they may be another's, which a package would overwrite or remove; give "
                                  "--out a new or empty folder (or remove them if s4al query wrote them)\n")
    assert {name: (out / "images" / name).read_bytes() for name in names} == before
    assert sorted(path.name for path in out.iterdir()) == ["images"]


def test_a_query_never_overwrites_or_removes_a_package_image_changed_since_it_wrote_it(run_dir, tmp_path):
    out = tmp_path / "package"
    invoke("query", run_dir, "--device", "cpu", "--out", out)
    with ledger_of(run_dir) as ledger:
        image_id = ledger.asked()[0].image_id
        done = [r.region_id for r in ledger.asked() if r.image_id == image_id]
    painted = out / "images" / f"{image_id}.png"
    painted.write_bytes(b"painted over in place")  # an annotator's work, saved over the package's image
    refused = runner.invoke(app, ["query", str(run_dir), "--device", "cpu", "--out", str(out)])
    assert (refused.exit_code, refused.output) == (1, (
        f"error: {painted}: a file no query package wrote (or changed since), which this package would overwrite; "
        "move it away or give --out another folder\n"))
    assert painted.read_bytes() == b"painted over in place"
    invoke("skip", run_dir, *[arg for region_id in done for arg in ("--region", region_id)])
    invoke("query", run_dir, "--device", "cpu", "--out", out)  # the image is no longer asked: kept all the same
    assert painted.read_bytes() == b"painted over in place"
    assert not (out / "overlays" / f"{image_id}.png").exists()  # the package's own overlay of it is gone


def test_a_query_stopped_part_way_into_a_new_folder_is_written_whole_by_the_next(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "package"
    made, task = [], package_module.task

    def failing_task(*args, **kwargs):  # as a Ctrl-C would, after the first image
        if made:
            raise KeyboardInterrupt
        made.append(task(*args, **kwargs))
        return made[-1]

    with monkeypatch.context() as patched:
        patched.setattr(package_module, "task", failing_task)
        with pytest.raises(KeyboardInterrupt), ActiveLearningRun(run_dir) as active_run:
            active_run.acquire(0)
            package_module.write_query_package(active_run, out)
    assert list((out / "images").glob("*.png"))  # what it wrote before it stopped
    invoke("query", run_dir, "--device", "cpu", "--out", out)
    with ledger_of(run_dir) as ledger:
        asked = sorted({r.image_id for r in ledger.asked()})
    assert sorted(path.stem for path in (out / "images").glob("*.png")) == asked
    (out / "manifest.csv").write_text("a spreadsheet's edit")
    refused = runner.invoke(app, ["query", str(run_dir), "--device", "cpu", "--out", str(out)])
    assert refused.exit_code == 1 and f"error: {out / 'manifest.csv'}: a file no query package wrote" in refused.output
    assert (out / "manifest.csv").read_text() == "a spreadsheet's edit"


def test_a_package_in_the_run_folder_written_without_a_record_is_the_runs_own(run_dir):
    """Packages written before they kept a record of their files: in the run's own folder s4al alone
    writes, so a query there takes their files as its package's."""
    invoke("query", run_dir, "--device", "cpu")
    package = run_dir / "queries" / "cycle_0"
    (package / ".s4al-query-package.json").unlink()
    mine = own_files(package / "images", ["fixed_by_me.png"])  # no image of the run: never the package's
    with ledger_of(run_dir) as ledger:
        image_id = ledger.asked()[0].image_id
        done = [r.region_id for r in ledger.asked() if r.image_id == image_id]
    invoke("skip", run_dir, *[arg for region_id in done for arg in ("--region", region_id)])
    invoke("query", run_dir, "--device", "cpu")
    assert not (package / "images" / f"{image_id}.png").exists()  # no longer asked: removed
    assert (package / "images" / "fixed_by_me.png").read_bytes() == mine["fixed_by_me.png"]
    with ledger_of(run_dir) as ledger:
        assert sorted(p.stem for p in (package / "images").glob("*.png")) == sorted(
            {*(r.image_id for r in ledger.asked()), "fixed_by_me"})
