"""`s4al compare` (s4al/report/compare.py): runs side by side, from run folders written by hand."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4al.cli import app
from s4al.config import load_config, save_config
from s4al.errors import S4alError
from s4al.report.compare import compare_runs


def summary(cycle: int, fraction: float, miou: float, classes=("road", "sky")) -> dict:
    return {"cycle": cycle, "labelled_fraction": fraction, "labelled_pixels": 100 + cycle,
            "val": {"miou": miou, "pixel_accuracy": 0.5, "iou": {name: miou for name in classes}},
            "bought": {"regions": 4, "skipped_regions": 0, "images": 0, "class_pixels": {"road": 8}},
            "train_seconds": 2.0, "acquire_seconds": 1.0}


def make_run(path: Path, summaries: list[dict], **settings) -> Path:
    """A run folder as `s4al run` leaves it, for what compare reads: its config and cycle summaries."""
    (path / "cycles").mkdir(parents=True)
    save_config(load_config("demo", settings), path / "config.yaml")
    for s in summaries:
        (path / "cycles" / f"cycle_{s['cycle']}.json").write_text(json.dumps(s))
    return path


def test_runs_are_compared_by_their_last_cycles_and_the_settings_they_differ_in(tmp_path):
    entropy = make_run(tmp_path / "entropy", [summary(0, 0.1, 0.40), summary(1, 0.12, 0.45)],
                       active={"metric": "entropy"}, train={"device": "cpu"})
    margin = make_run(tmp_path / "margin", [summary(0, 0.1, 0.40), summary(1, 0.125, 0.47)],
                      active={"metric": "margin"}, train={"device": "cuda"}, seed=3)
    compared = compare_runs([entropy, margin], tmp_path / "out")
    assert compared.runs == [[str(entropy), "1", "12.00", "45.00"], [str(margin), "1", "12.50", "47.00"]]
    assert compared.settings == {"active.metric": ["entropy", "margin"], "seed": ["3108", "3"]}  # not train.device
    assert compared.notes == []
    assert (tmp_path / "out" / "settings.csv").read_text().splitlines() == [
        f"setting,{entropy},{margin}", "active.metric,entropy,margin", "seed,3108,3"]  # the demo preset's seed
    lines = (tmp_path / "out" / "compare.csv").read_text().splitlines()
    assert lines[0].startswith("run,cycle,labelled_fraction,labelled_pixels,val_miou,")
    assert [line.split(",")[:5] for line in lines[1:]] == [
        [str(entropy), "0", "0.1", "100", "0.4"], [str(entropy), "1", "0.12", "101", "0.45"],
        [str(margin), "0", "0.1", "100", "0.4"], [str(margin), "1", "0.125", "101", "0.47"]]
    assert (tmp_path / "out" / "compare.png").stat().st_size > 0


def test_settings_no_run_reads_are_left_out(tmp_path):
    own = {"dataset": {"name": "folder", "root": "x"}, "ssl": {"enabled": False}}
    a = make_run(tmp_path / "a", [summary(0, 0.1, 0.4)], **own, active={"global_budget": 10})
    b = make_run(tmp_path / "b", [summary(0, 0.1, 0.5)], dataset={**own["dataset"], "synthetic": {"num_train": 9}},
                 ssl={"enabled": False, "replay": False, "ema_momentum": 0.9}, train={"lr": 0.02})
    assert compare_runs([a, b], tmp_path / "out").settings == {  # the evaluated teacher follows every training
        "ssl.ema_momentum": ["0.99", "0.9"], "train.lr": ["0.01", "0.02"]}
    synthetic = make_run(tmp_path / "synthetic", [summary(0, 0.1, 0.5)], dataset={"synthetic": {"num_train": 9}},
                         active={"selection": "global", "global_budget": 20})
    assert list(compare_runs([a, synthetic], tmp_path / "out").settings) == [  # read by one of the runs at least
        "active.global_budget", "active.selection", "dataset.name", "dataset.root", "dataset.synthetic.num_train",
        "ssl.enabled"]


def test_runs_on_other_classes_each_add_their_columns(tmp_path):
    a = make_run(tmp_path / "a", [summary(0, 0.1, 0.4)])
    b = make_run(tmp_path / "b", [summary(0, 0.1, 0.5, classes=("road", "car"))])
    assert compare_runs([a, b], tmp_path / "out").notes == [
        f"the runs are scored on other classes, so their mIoUs average other things: {a}: road, sky; {b}: road, car"]
    lines = (tmp_path / "out" / "compare.csv").read_text().splitlines()
    assert lines[0].endswith(",val_iou_road,val_iou_sky,val_iou_car")
    assert lines[1].endswith(",0.4,0.4,") and lines[2].endswith(",0.5,,0.5")


def test_runs_last_started_with_other_code_are_noted(tmp_path):
    def started(run: Path, *commits: str) -> Path:
        records = [{"s4al": "0.1.0", "git_commit": commit, "git_dirty": False} for commit in commits]
        (run / "starts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return run

    a = started(make_run(tmp_path / "a", [summary(0, 0.1, 0.4)]), "1" * 40, "abcdef0" + "0" * 33)
    b = started(make_run(tmp_path / "b", [summary(0, 0.1, 0.5)]), "abcdef0" + "0" * 33)
    unknown = make_run(tmp_path / "unknown", [summary(0, 0.1, 0.5)])  # no start recorded: its code is not known
    assert compare_runs([a, b, unknown], tmp_path / "out").notes == []
    started(b, "1234567" + "0" * 33)
    assert compare_runs([a, b, unknown], tmp_path / "out").notes == [
        f"the runs were last started with other code: {a}: s4al 0.1.0, git abcdef0; {b}: s4al 0.1.0, git 1234567"]


def test_cycles_trained_for_other_epochs_or_on_other_process_counts_are_noted(tmp_path):
    """Their configs alike: a run resumed with more cycles trained its former last cycle 6 times as
    long, and a run on 4 processes each step on 4 times the batch."""
    def trained(cycle: int, miou: float, epochs: int, processes: int = 1) -> dict:
        return summary(cycle, 0.1 + 0.01 * cycle, miou) | {"epochs": epochs, "processes": processes}

    made = make_run(tmp_path / "made", [trained(0, 0.40, 2), trained(1, 0.45, 2), trained(2, 0.47, 12)])
    resumed = make_run(tmp_path / "resumed", [trained(0, 0.40, 2), trained(1, 0.48, 12), trained(2, 0.49, 12)])
    four = make_run(tmp_path / "four", [trained(0, 0.41, 2, 4)])
    assert compare_runs([made, resumed, four], tmp_path / "out").notes == [
        "cycles trained otherwise (epochs x processes; train.batch_size is per process, and a run resumed with more "
        f"cycles trained its former last cycle longer): cycle 0: {made} 2 x 1, {resumed} 2 x 1, {four} 2 x 4; "
        f"cycle 1: {made} 2 x 1, {resumed} 12 x 1"]
    lines = (tmp_path / "out" / "compare.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert [line.split(",")[header.index("epochs")] for line in lines[1:]] == ["2", "2", "12", "2", "12", "12", "2"]
    assert compare_runs([made, resumed], tmp_path / "out").notes[0].endswith(f"cycle 1: {made} 2 x 1, {resumed} 12 x 1")


def test_a_run_still_asking_or_training_is_said_so_beside_its_last_cycle(tmp_path):
    from s4al.active.ledger import Ledger
    from s4al.active.phases import CyclePhases

    runs = [make_run(tmp_path / name, [summary(0, 0.1, 0.40)]) for name in ("done", "asking", "training")]
    for run in runs:
        with Ledger(run / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
            ledger.register_images([("a", 8, 8)])
            for phase in ("train", "acquire", "answer", "done"):
                phases.set_phase(0, phase)
            if run.name == "asking":  # cycle 1 trained and waits for the answer to the region it asked
                phases.set_phase(1, "train", {"labelled_fraction": 0.11, "labelled_pixels": 7,
                                              "val": summary(1, 0.11, 0.5)["val"]})
                phases.set_phase(1, "acquire")
                ledger.ask(1, [("a", (0, 0, 4, 4), "entropy", 1.0)])
                phases.set_phase(1, "answer")
            elif run.name == "training":
                phases.set_phase(1, "train")
    compared = compare_runs(runs, tmp_path / "out")
    assert [row[1] for row in compared.runs] == ["0", "1, asking", "0 (cycle 1 training)"]


def test_a_run_without_a_trained_cycle_and_a_run_given_twice_are_refused(tmp_path):
    done = make_run(tmp_path / "done", [summary(0, 0.1, 0.4)])
    fresh = make_run(tmp_path / "fresh", [])
    with pytest.raises(S4alError, match=f"{fresh}: no cycle has trained yet"):
        compare_runs([done, fresh], tmp_path / "out")
    with pytest.raises(S4alError, match=f"{done}: given twice"):
        compare_runs([done, done], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_compare_command_prints_the_table_and_names_a_missing_run(tmp_path):
    a = make_run(tmp_path / "a", [summary(0, 0.1, 0.4)], train={"lr": 0.02})
    b = make_run(tmp_path / "b", [summary(0, 0.1, 0.5)])
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "out"),
                                      "--supervised-miou", "0.6"])
    assert result.exit_code == 0, result.output
    assert "train.lr" in result.output and "0.02" in result.output and "compare.csv" in result.output
    missing = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    assert missing.exit_code == 1 and f"{tmp_path / 'nowhere'}: no such run folder" in missing.output
