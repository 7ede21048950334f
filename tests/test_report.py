"""The run report (s4al/report/figures.py, html.py): figures and HTML from a tiny two-cycle run,
checked in a real headless Chromium (skipped when Chromium is not installed), and the report command."""

import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config
from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import Ledger
from s4al.cli import app as s4al_app
from s4al.config import load_config, save_config
from s4al.data import IGNORE_INDEX
from s4al.data.synthetic import SYNTHETIC_CLASSES
from s4al.errors import S4alWarning
from s4al.report.figures import (
    ERROR_COLOURS, NotDrawn, bought_histogram, error_map, spread_indices, supervised_reference,
)
from s4al.report.html import duration, write_report
from s4al.report.table import write_cycles_csv
from test_predict_export import cli_app
from test_status import external_config

FIGURES = ("efficiency", "class_iou", "bought", "regions", "qualitative")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended to a copy of the page: after the load event, records how many <img> decoded.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const decoded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute("data-image-check", `${decoded}/${images.length}`);
});
</script>"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Cycle 0 trains and buys regions, cycle 1 trains: every figure has something to show."""
    folder = tmp_path_factory.mktemp("run")
    with ActiveLearningRun(folder, tiny_config(train={"epochs": 1, "device": "cpu"})) as run:
        run.run()  # closed, as `s4al run` closes it
    return folder


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> Path:
    return write_report(run_dir, tmp_path_factory.mktemp("report"), supervised_miou=0.5)


def test_report_writes_the_page_and_every_figure(report):
    assert report.name == "report.html"
    for name in FIGURES:
        with Image.open(report.parent / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
    html = report.read_text()
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    assert "% of supervised" in html and "seed" in html and "not drawn" not in html


def test_report_writes_labelled_share_against_miou_per_cycle_as_csv(run_dir, report):
    cycles = [json.loads(p.read_text()) for p in sorted((run_dir / "cycles").glob("cycle_*.json"))]
    with open(report.parent / "cycles.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["cycle"] for row in rows] == ["0", "1"]
    for row, cycle in zip(rows, cycles):
        assert float(row["labelled_fraction"]) == cycle["labelled_fraction"]
        assert float(row["val_miou"]) == cycle["val"]["miou"]
        assert int(row["regions_bought"]) == cycle["bought"]["regions"]
        assert float(row["val_iou_road"]) == cycle["val"]["iou"]["road"]
    assert "cycles.csv" in report.read_text()


def test_a_class_named_with_dollar_signs_is_drawn_as_its_name(tmp_path):
    import matplotlib as mpl

    from s4al.report.figures import STYLE, class_iou_bars

    cycles = [{"cycle": 0, "labelled_fraction": 0.1, "val": {"iou": {"cost_$5_vs_$6": 0.5, "sky": 0.25}}}]
    with mpl.rc_context(STYLE):  # as the report draws: matplotlib would read the name as a formula and fail
        class_iou_bars(cycles, ("cost_$5_vs_$6", "sky")).savefig(tmp_path / "classes.png")
    assert (tmp_path / "classes.png").stat().st_size > 0


def test_cycles_csv_hand_case(tmp_path):
    def summary(cycle, fraction, miou, road, regions, pixels, test=None):
        out = {"cycle": cycle, "labelled_fraction": fraction, "labelled_pixels": 1000 * cycle + 100,
               "val": {"miou": miou, "pixel_accuracy": 0.5, "iou": {"road": road, "sky": 0.25}},
               "bought": {"regions": regions, "skipped_regions": 0, "images": 0,
                          "class_pixels": {"road": pixels, "sky": 1, "void": 2}},
               "train_seconds": 3.5, "acquire_seconds": 1.25, "epochs": 2 + 10 * cycle, "processes": 4}
        return out if test is None else out | {"test": {"miou": test, "pixel_accuracy": 0.75,
                                                        "iou": {"road": None, "sky": 0.5}}}

    path = write_cycles_csv([summary(0, 0.1, 0.4, None, 4, 61), summary(1, 0.125, 0.45, 0.8, 0, 0, test=0.44)],
                            tmp_path / "cycles.csv")
    assert path.read_text().splitlines() == [
        "cycle,labelled_fraction,labelled_pixels,val_miou,val_pixel_accuracy,test_miou,test_pixel_accuracy,"
        "regions_bought,skipped_regions,images_bought,pixels_bought,train_seconds,acquire_seconds,epochs,processes,"
        "val_iou_road,val_iou_sky,test_iou_road,test_iou_sky",
        "0,0.1,100,0.4,0.5,,,4,0,0,64,3.5,1.25,2,4,,0.25,,",
        "1,0.125,1100,0.45,0.5,0.44,0.75,0,0,0,3,3.5,1.25,12,4,0.8,0.25,,0.5",
    ]


def test_report_table_has_one_row_per_cycle(run_dir, report):
    cycles = [json.loads(p.read_text()) for p in sorted((run_dir / "cycles").glob("cycle_*.json"))]
    rows = re.findall(r"<tr><td>(\d+)</td>", report.read_text())
    assert rows == [str(c["cycle"]) for c in cycles] == ["0", "1"]
    assert f"{100 * cycles[-1]['labelled_fraction']:.2f}" in report.read_text()


def _chromium(*args: str, profile: Path) -> str:
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_loads_in_headless_chromium_with_every_image_decoded(report, tmp_path):
    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text().replace("</body>", IMAGE_CHECK + "\n</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", checked.as_uri(), profile=tmp_path / "profile")
    assert "<h1>S4AL run report</h1>" in dom
    assert f'data-image-check="{len(FIGURES)}/{len(FIGURES)}"' in dom
    screenshot = tmp_path / "report.png"
    _chromium(f"--screenshot={screenshot}", "--window-size=1280,4000", report.as_uri(), profile=tmp_path / "profile")
    with Image.open(screenshot) as image:
        assert image.size == (1280, 4000)


def test_a_run_missing_its_last_checkpoint_and_images_it_asked_is_still_reported_saying_what_is_not_drawn(
        run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "checkpoints" / "cycle_1.pt").unlink()  # cleaned up to save disk
    with Ledger(run / "ledger.sqlite", readonly=True) as ledger:
        asked = sorted({r.image_id for r in ledger.regions()})
    config = (run / "config.yaml").read_text()
    kept = min(int(image_id.rsplit("_", 1)[1]) for image_id in asked) + 1  # the dataset lost all but one asked image
    (run / "config.yaml").write_text(config.replace("num_train: 20", f"num_train: {kept}"))
    page = write_report(run, tmp_path / "report")
    assert sorted(p.name for p in page.parent.glob("*.png")) == sorted(f"{n}.png" for n in FIGURES if n != "qualitative")
    html = page.read_text()
    assert re.search(r"the cycle 1 checkpoint is not in the run folder \(.*cycle_1.pt\)", html)
    assert html.count('src="data:image/png;base64,') == len(FIGURES) - 1
    (run / "ledger.sqlite").unlink()  # gone too: the classes are the dataset's
    assert write_report(run, tmp_path / "without_ledger").is_file()


def test_report_command(run_dir, tmp_path):
    result = CliRunner().invoke(cli_app(), ["report", str(run_dir), "--out", str(tmp_path), "--supervised-miou", "0.4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").is_file()


def test_a_supervised_result_of_another_dataset_is_refused_as_the_reference(run_dir, tmp_path):
    classes = json.loads((run_dir / "cycles" / "cycle_0.json").read_text())["val"]["iou"]
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"miou": 0.2, "iou": {"circle": 0.1, "background": 0.3}}))
    refused = CliRunner().invoke(cli_app(), ["report", str(run_dir), "--out", str(tmp_path / "r"),
                                             "--supervised-miou", str(result)], env={"COLUMNS": "250"})
    assert refused.exit_code == 2 and "a result of other classes (circle, background) than the run's" in refused.output
    assert not (tmp_path / "r").exists()
    result.write_text(json.dumps({"miou": 0.2, "iou": {name: 0.2 for name in classes}}))
    taken = CliRunner().invoke(cli_app(), ["report", str(run_dir), "--out", str(tmp_path / "r"),
                                           "--supervised-miou", str(result)])
    assert taken.exit_code == 0, taken.output


def test_a_run_and_its_report_leave_the_ledger_whole_on_its_own(run_dir, tmp_path):
    """`s4al run` closes its ledger, putting the file back in rollback-journal mode; the report, a
    reader, then adds no file beside it (it could not on read-only media)."""
    def beside() -> list[str]:
        return sorted(path.name for path in run_dir.glob("ledger.sqlite*"))

    resumed = CliRunner().invoke(s4al_app, ["run", "--resume", str(run_dir), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert beside() == ["ledger.sqlite"]
    with closing(sqlite3.connect(run_dir / "ledger.sqlite")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    result = CliRunner().invoke(cli_app(), ["report", str(run_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert beside() == ["ledger.sqlite"]


def test_report_into_a_file_is_an_error_naming_it(run_dir, tmp_path):
    taken = tmp_path / "report"
    taken.write_text("not a folder")
    result = CliRunner().invoke(cli_app(), ["report", str(run_dir), "--out", str(taken)], env={"COLUMNS": "500"})
    assert (result.exit_code, result.output) == (1, f"error: {taken}: exists and is not a folder; give a folder for the output\n")


def test_report_command_on_a_folder_without_cycles(tmp_path):
    save_config(load_config("demo"), tmp_path / "config.yaml")
    result = CliRunner().invoke(cli_app(), ["report", str(tmp_path)], env={"COLUMNS": "500"})
    assert result.exit_code == 1
    assert result.output == (f"error: {tmp_path}: no cycle has trained yet; a cycle is reported once it has trained "
                             f"(`s4al status {tmp_path}` shows the training under way)\n")


def test_a_cycle_waiting_for_its_answers_is_reported_with_its_model_and_the_regions_it_asks(tmp_path):
    """A person answers over days: the report shows the model that asked, and what it asked, meanwhile."""
    run = tmp_path / "run"
    with ActiveLearningRun(run, external_config()) as active_run:
        active_run.run()  # trains cycle 0, asks, and stops: nobody has answered
        asked = len(active_run.ledger.asked())
        trained = active_run.phases.metrics(0)
    miou, labelled = trained["val"]["miou"], trained["labelled_fraction"]
    assert asked > 0 and not (run / "cycles").exists()
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "bought.png").write_bytes(b"an earlier report's figure, of another run")
    page = write_report(run, tmp_path / "report").read_text()
    assert sorted(p.stem for p in (tmp_path / "report").glob("*.png")) == ["class_iou", "efficiency", "qualitative",
                                                                         "regions"]
    assert "What does the network want?: not drawn, no cycle has bought labels yet." in page
    assert re.search(rf"<div class=\"value\">{100 * miou:.1f}%</div><div class=\"label\">val mIoU of cycle 0, "
                     rf"asking</div>", page)
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert cells[:7] == ["0", f"{100 * labelled:.2f}", f"{trained['labelled_pixels']:,}", f"{asked} waiting", "–", "–",
                         f"{100 * miou:.2f}"]
    [row] = list(csv.DictReader((tmp_path / "report" / "cycles.csv").open()))
    assert (row["cycle"], row["regions_bought"], row["pixels_bought"]) == ("0", "", "")
    assert float(row["val_miou"]) == miou
    with Ledger(run / "ledger.sqlite") as ledger:  # every region answered: the run trains next once resumed
        ledger.answer_many([(r.region_id, np.zeros(r.shape, np.uint8)) for r in ledger.asked()], by="test")
    page = write_report(run, tmp_path / "report").read_text()
    assert "val mIoU of cycle 0, answered</div>" in page and f"<td>{asked} answered</td>" in page


def test_supervised_reference_from_a_number_or_a_result_file(tmp_path):
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"cycle": 0, "miou": 0.61}))
    assert supervised_reference(None) is None
    assert supervised_reference("0.7") == supervised_reference(0.7) == 0.7
    assert supervised_reference(result) == supervised_reference(str(result)) == 0.61
    with pytest.raises(ValueError, match="fraction"):
        supervised_reference(61.0)
    with pytest.raises(ValueError, match="neither"):
        supervised_reference(tmp_path / "missing.json")
    for miou in (0, 0.0, "0.5", None, True):  # no share of 0; a string or no number in the file is no mIoU
        result.write_text(json.dumps({"miou": miou}))
        with pytest.raises(ValueError, match=r"supervised mIoU must be a fraction in \(0, 1\]"):
            supervised_reference(result)
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\].*got 0.0"):
        supervised_reference("0")
    result.write_text(json.dumps({"miou": 0.61, "iou": {"road": 0.9, "car": 0.32}}))
    assert supervised_reference(result, ["road", "car"]) == supervised_reference(result) == 0.61
    assert supervised_reference("0.7", ["sky"]) == 0.7  # a number names no classes
    for classes in (["circle", "square", "background"], ["car", "road"]):  # another dataset; another class order
        with pytest.raises(ValueError, match=r"a result of other classes \(road, car\) than the run's"):
            supervised_reference(result, classes)
    scores = {"checkpoint": "full/checkpoints/cycle_0.pt", "miou": 0.52, "iou": {"road": 0.8, "car": 0.24}}
    result.write_text(json.dumps({**scores, "split": "val", "network": "teacher"}))  # s4al evaluate --json
    assert supervised_reference(result, ["road", "car"]) == 0.52
    for split, network in (("test", "teacher"), ("val", "student")):
        result.write_text(json.dumps({**scores, "split": split, "network": network}))
        with pytest.raises(ValueError, match=f"the {network} scored on split '{split}'; the cycles are the teacher's val"):
            supervised_reference(result, ["road", "car"])


def test_error_map_marks_wrong_and_ignored_pixels():
    label = np.array([[0, 1], [IGNORE_INDEX, 2]], dtype=np.uint8)
    prediction = np.array([[0, 2], [1, 2]], dtype=np.uint8)
    colours = error_map(label, prediction)
    assert [tuple(colours[y, x]) for y, x in ((0, 0), (0, 1), (1, 0), (1, 1))] == [
        ERROR_COLOURS["correct"], ERROR_COLOURS["wrong"], ERROR_COLOURS["ignored"], ERROR_COLOURS["correct"]]


def test_qualitative_images_are_a_fixed_spread():
    assert spread_indices(4, 24) == [0, 8, 15, 23]
    assert spread_indices(4, 2) == [0, 1]


def test_no_bought_histogram_before_anything_was_bought():
    nothing = {name: 0 for name in (*SYNTHETIC_CLASSES.names, "void")}
    with pytest.raises(NotDrawn, match="bought"):
        bought_histogram([{"cycle": 0, "bought": {"regions": 0, "images": 0, "class_pixels": nothing}}],
                         SYNTHETIC_CLASSES)


def test_duration_reads_like_a_person_wrote_it():
    assert [duration(s) for s in (None, 4.4, 75, 3 * 3600 + 125)] == ["–", "4 s", "1 min 15 s", "3 h 02 min"]


def answer_masks(run_dir: Path, folder: Path, class_id: int, cycle: int, mtime: float) -> None:
    """One class-id PNG per image asked in `cycle`, `class_id` inside its asked boxes, void elsewhere."""
    folder.mkdir(parents=True)
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        regions = ledger.regions(cycle)
        sizes = {record.image_id: (record.height, record.width) for record in ledger.images()}
    for image_id in {region.image_id for region in regions}:
        mask = np.full(sizes[image_id], IGNORE_INDEX, np.uint8)
        for region in regions:
            if region.image_id == image_id:
                y0, x0, y1, x1 = region.box
                mask[y0:y1, x0:x1] = class_id
        Image.fromarray(mask).save(folder / f"{image_id}.png")
        os.utime(folder / f"{image_id}.png", (mtime, mtime))


def test_a_finished_cycle_corrected_by_a_later_import_is_summarised_as_it_is_now(tmp_path):
    from s4al.annotation.answers import import_answers

    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, external_config()) as run:
        run.run()  # cycle 0 trains and asks
    answer_masks(run_dir, tmp_path / "first", class_id=1, cycle=0, mtime=time.time() - 60)
    import_answers(run_dir, tmp_path / "first")
    with ActiveLearningRun(run_dir) as run:
        run.run()  # cycle 0 is done (its summary written), cycle 1 trains and asks
    summary = run_dir / "cycles" / "cycle_0.json"
    pixels = json.loads(summary.read_text())["bought"]["class_pixels"]
    names = list(SYNTHETIC_CLASSES.names)
    bought = pixels[names[1]]
    assert bought > 0 and sum(pixels.values()) == bought  # every bought pixel is class 1
    answer_masks(run_dir, tmp_path / "second", class_id=2, cycle=0, mtime=time.time())
    assert import_answers(run_dir, tmp_path / "second").corrected
    pixels = json.loads(summary.read_text())["bought"]["class_pixels"]
    assert (pixels[names[1]], pixels[names[2]]) == (0, bought)
    # killed once the correction is written, before the summary is: the run writes it as it resumes (as would
    # the next import or skip)
    from s4al.active import summaries

    class Killed(Exception):
        pass

    answer_masks(run_dir, tmp_path / "fourth", class_id=3, cycle=0, mtime=time.time() + 30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(summaries, "write_summary", lambda *args: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            import_answers(run_dir, tmp_path / "fourth")
    assert json.loads(summary.read_text())["bought"]["class_pixels"][names[2]] == bought  # as before the kill
    with ActiveLearningRun(run_dir) as run:
        run.run()  # cycle 1 still waits for its answers
    pixels = json.loads(summary.read_text())["bought"]["class_pixels"]
    assert (pixels[names[2]], pixels[names[3]]) == (0, bought)
    # a correction committed while another answer of the cycle is lost: imported all the same, the summary said
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        lost, *others = ledger.answered(0)
    (run_dir / lost.label_path).unlink()
    answer_masks(run_dir, tmp_path / "third", class_id=1, cycle=0, mtime=time.time() + 60)
    for path in (tmp_path / "third").iterdir():
        if path.stem == lost.image_id:
            path.unlink()  # its answer is not given again
    with pytest.warns(S4alWarning, match=r"the summary of cycle 0 .* is not written again: .*stored answer of region"):
        assert import_answers(run_dir, tmp_path / "third").corrected
