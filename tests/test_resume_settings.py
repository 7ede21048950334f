"""The settings a resumed run may change (`s4al run --resume RUN --set KEY=VALUE`) and what it
refuses: more or fewer cycles, the dataset and weights moved; and the weights read before a run
begins."""

import hashlib
import io
import re
import shutil
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from s4al import distributed
from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import Ledger, LedgerError
from s4al.active.phases import CyclePhases
from s4al.cli import app
from s4al.data import DatasetError
from s4al.errors import S4alError
from s4al.run_folder import RunFolder, RunFolderError
from s4al.train.trainer import TrainingStopped
from conftest import ledger_of
from test_cycle import Killed, cycle_config, ledger_snapshot
from test_own_data import CLASSES, make_dataset, own_config

runner = CliRunner()


def saved(run_dir, section: str, key: str):
    return yaml.safe_load((run_dir / "config.yaml").read_text())[section][key]


def saved_cycles(run_dir) -> int:
    return saved(run_dir, "active", "cycles")


def finished_run(run_dir, cycles: int, **active) -> None:
    ActiveLearningRun(run_dir, cycle_config(active={"cycles": cycles, **active})).run()


@pytest.fixture(scope="module")
def two_cycles(tmp_path_factory):
    """A run made with 2 cycles: what a run extended to 2 must decide."""
    run_dir = tmp_path_factory.mktemp("two_cycles")
    finished_run(run_dir, cycles=2)
    return run_dir


def test_cycle_summaries_deleted_by_hand_are_written_again_by_a_resume_from_the_ledger(two_cycles, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(two_cycles, run_dir)
    summaries = [path.read_text() for path in sorted((run_dir / "cycles").iterdir())]
    assert len(summaries) == 3
    shutil.rmtree(run_dir / "cycles")
    ActiveLearningRun(run_dir).run()  # finished: it trains nothing
    assert [path.read_text() for path in sorted((run_dir / "cycles").iterdir())] == summaries


def test_a_finished_run_given_one_more_cycle_asks_with_its_last_model_as_a_run_made_with_it(two_cycles, tmp_path):
    """With final_cycle_epoch_multiplier 1 the former last cycle trained as any other, so the run
    extended from 1 to 2 cycles decides exactly what the run made with 2 did."""
    finished_run(tmp_path, cycles=1)
    assert sorted(p.name for p in (tmp_path / "cycles").iterdir()) == ["cycle_0.json", "cycle_1.json"]
    extended = ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 2}})
    assert [s["cycle"] for s in extended.run()] == [0, 1, 2]
    assert ledger_snapshot(tmp_path) == ledger_snapshot(two_cycles)
    assert saved_cycles(tmp_path) == 2
    (change,) = extended.ledger.get_meta("resume_changes")
    assert change["active.cycles"] == {"was": 1, "now": 2}
    again = ActiveLearningRun(tmp_path)  # a plain resume keeps the cycles it was given
    assert again.final_cycle == 2 and [s["cycle"] for s in again.run()] == [0, 1, 2]


def test_each_cycle_summary_says_how_long_it_trained_so_an_extended_run_is_told_apart(tmp_path):
    finished_run(tmp_path, cycles=1, final_cycle_epoch_multiplier=2.0)
    summaries = ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 2}}).run()
    assert [(s["epochs"], s["processes"]) for s in summaries] == [(1, 1), (2, 1), (2, 1)]  # made with 2: 1, 1, 2


def test_a_kill_while_the_last_cycle_is_reopened_resumes_to_the_same_run(two_cycles, tmp_path):
    finished_run(tmp_path, cycles=1)
    with pytest.MonkeyPatch.context() as mp:  # the summary is gone, the phase still 'done'
        mp.setattr(CyclePhases, "reopen", lambda phases, cycle: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 2}}).run()
    assert not (tmp_path / "cycles" / "cycle_1.json").exists() and saved_cycles(tmp_path) == 2
    ActiveLearningRun(tmp_path).run()
    assert ledger_snapshot(tmp_path) == ledger_snapshot(two_cycles)


def test_fewer_cycles_are_taken_while_no_begun_cycle_changes_its_role(tmp_path):
    ActiveLearningRun(tmp_path, cycle_config(active={"cycles": 3, "annotator": "external"})).run()
    phases = ActiveLearningRun(tmp_path).phases
    assert phases.last_cycle() == 0 and phases.phase(0) == "answer"  # cycle 0 asked; the run waits
    with pytest.raises(RunFolderError, match="active.cycles=0 refused: cycle 0 buys labels, so the run needs at "
                                             "least 1"):
        ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 0}})
    assert saved_cycles(tmp_path) == 3
    assert ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 1}}).final_cycle == 1
    assert saved_cycles(tmp_path) == 1


def test_the_last_cycle_still_training_keeps_its_role(tmp_path):
    """Its checkpoint follows the last cycle's schedule; it must end before the run gets more cycles."""
    set_phase = CyclePhases.set_phase

    def dies_at_done(phases, cycle, phase, metrics=None):
        if phase == "done":
            raise Killed
        return set_phase(phases, cycle, phase, metrics)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CyclePhases, "set_phase", dies_at_done)
        with pytest.raises(Killed):
            finished_run(tmp_path, cycles=0)
    with pytest.raises(RunFolderError, match="cycle 0 is training as the last cycle"):
        ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 1}})
    assert saved_cycles(tmp_path) == 0
    ActiveLearningRun(tmp_path).run()  # resumed to its end, it takes more cycles
    assert [s["cycle"] for s in ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 1}}).run()] == [0, 1]


def test_only_the_last_cycle_done_goes_back_to_acquire(tmp_path):
    finished_run(tmp_path, cycles=1)
    phases = ActiveLearningRun(tmp_path).phases
    with pytest.raises(LedgerError, match="cycle 0 cannot be reopened: only the last cycle, done, can"):
        phases.reopen(0)
    with pytest.raises(LedgerError, match="cycle 2 cannot be reopened: .*it has not started"):
        phases.reopen(2)


def test_the_config_digest_ignores_cycles_and_layout_but_not_settings(tmp_path):
    finished_run(tmp_path, cycles=0)
    config = tmp_path / "config.yaml"
    text = config.read_text()
    config.write_text("# edited by hand\n" + text.replace("cycles: 0", "cycles: 1"))
    assert ActiveLearningRun(tmp_path).final_cycle == 1
    config.write_text(text.replace("metric: entropy", "metric: margin"))
    with pytest.raises(RunFolderError, match="config.yaml: changed since the run was made"):
        ActiveLearningRun(tmp_path)


def version_3_run(run_dir) -> Path:
    """A finished external-annotator run as a version-3 s4al left it; its config.yaml."""
    from s4al.active.ledger import CONFIG_DIGEST
    from s4al.config import config_digest

    finished_run(run_dir, cycles=0, annotator="external")
    config = run_dir / "config.yaml"
    data = yaml.safe_load(config.read_text())
    del data["active"]["metric_options"]  # as a version-3 run folder holds it
    config.write_text(yaml.safe_dump(data | {"config_version": 3}, sort_keys=False))
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.set_meta(CONFIG_DIGEST, config_digest(config))
    return config


def test_a_run_of_an_older_config_version_given_more_cycles_twice_resumes_both_times(tmp_path):
    """More cycles rewrite config.yaml as this s4al writes it (a newer config_version, its added keys):
    the digest kept is of that file, so the next resume finds it unchanged."""
    config = version_3_run(tmp_path)
    for cycles in (1, 2):
        result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--set", f"active.cycles={cycles}", "--quiet"])
        assert result.exit_code == 0, result.output
        assert "edited since" not in runner.invoke(app, ["status", str(tmp_path)]).output
    assert yaml.safe_load(config.read_text())["config_version"] == 4


@pytest.mark.parametrize("killed", ["before", "after"])
def test_a_resume_killed_as_it_rewrites_an_older_config_version_resumes(tmp_path, killed):
    """The new file's digest is kept before the file is written: a kill before or after the
    rewrite leaves the ledger and config.yaml agreeing."""
    config = version_3_run(tmp_path)
    real_save = RunFolder.save_config

    def killed_at_the_rewrite(folder, cfg):
        if killed == "after":
            real_save(folder, cfg)
        raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunFolder, "save_config", killed_at_the_rewrite)
        with pytest.raises(Killed):
            ActiveLearningRun(tmp_path, overrides={"active": {"cycles": 1}})
    assert yaml.safe_load(config.read_text())["config_version"] == (4 if killed == "after" else 3)
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--set", "active.cycles=1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "edited since" not in runner.invoke(app, ["status", str(tmp_path)]).output
    config.write_text(config.read_text().replace("metric: entropy", "metric: margin"))  # still checked
    with pytest.raises(RunFolderError, match="config.yaml: changed since the run was made"):
        ActiveLearningRun(tmp_path)


@pytest.mark.parametrize("damage", ["deleted", "cut short", "a damaged header"])
def test_an_oracle_runs_lost_answer_is_written_again_from_the_dataset_as_it_resumes(tmp_path, damage):
    finished_run(tmp_path, cycles=1)
    with Ledger(tmp_path / "ledger.sqlite", readonly=True) as ledger:
        lost = ledger.answered()[0]
    stored = tmp_path / lost.label_path
    kept = stored.read_bytes()
    if damage == "deleted":
        stored.unlink()
        said = " ".join(runner.invoke(app, ["status", str(tmp_path)]).output.split())
        assert "1 answered region lost the stored answer (its file missing); `s4al run --resume` writes them again " \
               "from the dataset's labels." in said and "s4al import" not in said
    else:  # Pillow raises OSError for the one, ValueError for the other
        stored.write_bytes(kept[:40] if damage == "cut short" else kept[:8] + b"\0\0\0\1" + kept[12:])  # IHDR 1 byte
        with Ledger(tmp_path / "ledger.sqlite", readonly=True) as ledger, \
                pytest.raises(LedgerError, match=f"{stored}: the stored answer of region {lost.region_id} .* unreadable"):
            ledger.patch(lost)
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--set", "active.cycles=2", "--quiet"])
    assert result.exit_code == 0, result.output
    with Ledger(tmp_path / "ledger.sqlite", readonly=True) as ledger:
        again = next(region for region in ledger.answered() if region.region_id == lost.region_id)
        assert np.array_equal(ledger.patch(again), np.asarray(Image.open(io.BytesIO(kept))))
        assert again.answered_by == lost.answered_by


def test_a_ledger_made_before_cycles_could_change_is_checked_by_the_file_bytes_then_upgraded(tmp_path):
    finished_run(tmp_path, cycles=0)
    config, ledger = tmp_path / "config.yaml", tmp_path / "ledger.sqlite"
    text = config.read_text()
    with closing(sqlite3.connect(ledger)) as conn, conn:
        conn.execute("DELETE FROM meta WHERE key = 'config_digest'")
        conn.execute("INSERT INTO meta VALUES ('config_sha256', ?)",
                     (f'"{hashlib.sha256(config.read_bytes()).hexdigest()}"',))
    config.write_text(text + "\n")
    with pytest.raises(RunFolderError, match="config.yaml: changed since the run was made"):
        ActiveLearningRun(tmp_path)
    config.write_text(text)
    ActiveLearningRun(tmp_path).ledger.close()
    config.write_text(text.replace("cycles: 0", "cycles: 1"))  # the upgraded ledger lets cycles change
    assert ActiveLearningRun(tmp_path).final_cycle == 1


def test_commands_on_a_finished_run_say_how_to_ask_for_more(tmp_path):
    finished_run(tmp_path, cycles=0, annotator="external")
    result = runner.invoke(app, ["skip", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (f"The run has finished its last cycle (0). For more labels, `s4al run --resume {tmp_path} "
            "--set active.cycles=1`") in " ".join(result.output.split())


def test_fewer_cycles_than_a_finished_run_ran_are_refused_by_the_command(tmp_path):
    finished_run(tmp_path, cycles=1)
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--set", "active.cycles=0", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "active.cycles=0 refused: cycle 1 has begun, so the run needs at least 1" in " ".join(result.output.split())


# ---- files moved --------------------------------------------------------------------------------
def test_a_run_whose_dataset_moved_is_pointed_at_it_on_resume_and_keeps_the_new_place(tmp_path):
    make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, own_config(tmp_path / "data")).run()  # cycle 0 asks, then waits
    (tmp_path / "data").rename(tmp_path / "moved")
    with pytest.raises(DatasetError, match=f"no such dataset folder.*; if the dataset moved: s4al run --resume "
                                           f"{run_dir} --set dataset.root=ITS_NEW_FOLDER"):
        ActiveLearningRun(run_dir)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nowhere'}: no such dataset folder[^;]*$"):  # no hint: it was given
        ActiveLearningRun(run_dir, overrides={"dataset": {"root": str(tmp_path / "nowhere")}})
    make_dataset(tmp_path / "other", masked=["m1", "m2"], unmasked=["x1", "x2"], val=["v9"])
    with pytest.raises(DatasetError, match="images .*: in this run's ledger but no longer in the dataset: put the images back"):
        ActiveLearningRun(run_dir, overrides={"dataset": {"root": str(tmp_path / "other")}})
    assert saved(run_dir, "dataset", "root") == str(tmp_path / "data")
    ActiveLearningRun(run_dir, overrides={"dataset": {"root": str(tmp_path / "moved")}}).close()
    assert saved(run_dir, "dataset", "root") == str(tmp_path / "moved")
    assert ActiveLearningRun(run_dir).phases.phase(0) == "answer"  # a plain resume finds it there


def test_wrong_weights_are_refused_before_a_run_begins_and_the_corrected_command_starts_it(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match=f"{missing}: model.weights file not found"):
        ActiveLearningRun(tmp_path / "run", cycle_config(model={"weights": str(missing)}))
    assert not RunFolder(tmp_path / "run").begun()
    ActiveLearningRun(tmp_path / "run", cycle_config(active={"cycles": 0})).close()
    with pytest.raises(FileNotFoundError, match=f"{missing}: model.weights file not found"):
        ActiveLearningRun(tmp_path / "run", overrides={"model": {"weights": str(missing)}})
    assert saved(tmp_path / "run", "model", "weights") is None


@pytest.mark.parametrize("content, problem", [
    (b"junk", "is not a readable PyTorch weights file ("),  # not a zip or pickle
    (b"", "is not a readable PyTorch weights file"),
    ("tensor", "holds a Tensor, not a state dict of the encoder"),
    ("pickled", "is not a readable PyTorch weights file (UnpicklingError: Weights only load failed"),  # a whole module, pickled
])
def test_weights_that_are_no_state_dict_are_refused_naming_the_file_and_the_problem(tmp_path, content, problem):
    weights = tmp_path / "weights.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), weights)
    elif content == "pickled":
        torch.save(torch.nn.Linear(2, 2), weights)
    else:
        weights.write_bytes(content)
    with pytest.raises(S4alError, match=re.escape(f"{weights}: model.weights ") + ".*" + re.escape(problem)):
        ActiveLearningRun(tmp_path / "run", cycle_config(model={"weights": str(weights)}))
    assert not RunFolder(tmp_path / "run").begun()


def test_ctrl_c_ends_a_run_saying_how_to_go_on(tmp_path, monkeypatch):
    finished_run(tmp_path, cycles=0)

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(ActiveLearningRun, "run", interrupted)
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--quiet"])
    assert result.exit_code == 130
    assert f"interrupted; `s4al run --resume {tmp_path}` goes on from the last checkpoint" in " ".join(result.output.split())
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # rank 0 of a torchrun job
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--quiet"])
    assert (f"interrupted; `s4al run --resume {tmp_path}` under the same torchrun line (2 processes) goes on"
            in " ".join(result.output.split()))


def test_a_stop_that_checkpointed_its_step_ends_a_run_as_its_signal_would(tmp_path, monkeypatch):
    finished_run(tmp_path, cycles=0)

    def stopped(run):
        raise TrainingStopped(f"{tmp_path}, cycle 1: stopped (SIGTERM) after step 7 of 40, saved in X", signal.SIGTERM)

    monkeypatch.setattr(ActiveLearningRun, "run", stopped)
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--quiet"])
    assert result.exit_code == 128 + 15  # a batch scheduler reads it as ended by SIGTERM
    assert (f"{tmp_path}, cycle 1: stopped (SIGTERM) after step 7 of 40, saved in X; `s4al run --resume {tmp_path}` "
            "goes on from there") in " ".join(result.output.split())


@pytest.mark.parametrize("classes", [
    [{"name": "road", "color": [128, 64, 128]}, {"name": "sky", "color": [70, 130, 180]},  # two swapped
     {"name": "car", "color": [0, 0, 142]}],
    [{"name": "road", "color": [128, 64, 128]}, {"name": "car", "color": [0, 0, 142]},  # one added
     {"name": "sky", "color": [70, 130, 180]}, {"name": "bike", "color": [119, 11, 32]}],
])
def test_a_class_list_changed_after_the_run_was_made_is_refused_naming_the_file(tmp_path, classes):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, own_config(root)).close()
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": classes}))
    with pytest.raises(DatasetError, match=rf"{re.escape(str(root / 'classes.yaml'))}: the run was made with the "
                                           r"classes road, car, sky; the dataset now has "
                                           rf"{', '.join(c['name'] for c in classes)}: .*Restore the classes"):
        ActiveLearningRun(run_dir)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES}))  # the run's classes again: it opens
    ActiveLearningRun(run_dir).close()


def test_a_class_list_reading_masks_otherwise_after_the_run_was_made_is_refused_naming_each_change(tmp_path):
    """The same names, but two colours swapped and another void value: colour masks (and the void of
    id masks) would be read as other classes, so the run refuses to open."""
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, own_config(root)).close()
    swapped = [{**CLASSES[0], "color": CLASSES[1]["color"]}, {**CLASSES[1], "color": CLASSES[0]["color"]}, CLASSES[2]]
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": swapped, "ignore_value": 200}))
    with pytest.raises(DatasetError, match=re.escape(
            f"{root / 'classes.yaml'}: class 'road' has the colour [0, 0, 142] (was [128, 64, 128]); class 'car' has "
            "the colour [128, 64, 128] (was [0, 0, 142]); ignore_value is 200 (was 255) since the run was made: the "
            "same masks would give other labels")):
        ActiveLearningRun(run_dir)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "ignore_color": [255, 255, 255]}))
    with pytest.raises(DatasetError, match=re.escape("ignore_color is [255, 255, 255] (was null) since the run")):
        ActiveLearningRun(run_dir)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "ignore_value": 255}))  # as it was
    ActiveLearningRun(run_dir).close()
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "colour_masks": False}))
    ActiveLearningRun(run_dir).close()  # a mask read otherwise so is refused as it is read, never read as other classes


def test_a_checkpoint_gone_from_a_cycle_that_trained_is_said_with_what_the_run_needs_it_for(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        mp.setattr(Ledger, "ask", lambda *args: (_ for _ in ()).throw(Killed()))
        ActiveLearningRun(run_dir, cycle_config(active={"annotator": "external"})).run()  # cycle 0 trained, scored
    (run_dir / "checkpoints" / "cycle_0.pt").unlink()
    with pytest.raises(RunFolderError, match=r"cycle_0.pt: gone, but cycle 0 has trained: the run scores the pool, "
                                             r".*put it back \(from a backup\), or start a new run"):
        with ActiveLearningRun(run_dir) as run:
            run.run()


def test_cycles_edited_by_hand_in_config_yaml_are_checked_as_a_set_on_resume_is(tmp_path):
    ActiveLearningRun(tmp_path, cycle_config(active={"cycles": 3, "annotator": "external"})).run()  # cycle 0 asks
    config = tmp_path / "config.yaml"
    made = config.read_text()
    config.write_text(made.replace("  cycles: 3\n", "  cycles: 0\n"))
    with pytest.raises(RunFolderError, match="active.cycles=0 refused: cycle 0 buys labels, so the run needs at "
                                             "least 1"):
        ActiveLearningRun(tmp_path)
    config.write_text(made.replace("  cycles: 3\n", "  cycles: 1\n"))
    assert ActiveLearningRun(tmp_path).final_cycle == 1
    with ledger_of(tmp_path) as ledger:
        assert [{key: change[key] for key in change if key != "at"} for change in ledger.get_meta("resume_changes")] \
            == [{"active.cycles": {"was": 3, "now": 1}}]
