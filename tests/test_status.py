"""`s4al status`: where a run stands, read without touching the run folder."""

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from test_cycle import cycle_config
from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import PROJECT_META, Ledger, LedgerError
from s4al.active.phases import CyclePhases
from s4al.cli import app
from s4al.errors import S4alWarning
from s4al.report.figures import read_cycles
from s4al.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
WIDE = {"COLUMNS": "250"}  # no line breaks in rich output


def external_config():
    return tiny_config(active={"annotator": "external", "cycles": 2, "final_cycle_epoch_multiplier": 2.0},
                       train={"epochs": 1, "iters_per_epoch": 1, "device": "cpu"}, ssl={"cold_start_epochs": 0})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run whose cycle 0 has trained but not asked yet (phase 'acquire')."""
    run = tmp_path_factory.mktemp("trained") / "run"
    with ActiveLearningRun(run, external_config()) as active_run:
        active_run._train(0)
    RunFolder(run).unlock()
    return run


@pytest.fixture
def run_dir(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def status(run_dir):
    result = CliRunner().invoke(app, ["status", str(run_dir)], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_trained_cycle_not_yet_asked_says_so_and_how_to_go_on_changing_nothing(run_dir):
    ledger = run_dir / "ledger.sqlite"
    before = digest(ledger)
    output = status(run_dir)
    assert "cycle 0 has trained; it scores the pool and asks next." in output
    row = next(line for line in output.splitlines() if line.count("│") > 2 and line.split("│")[1].strip() == "0")
    assert row.split("│")[4].strip() == "asks next"  # its model's labelled share and val mIoU beside
    assert f"Continue with `s4al run --resume {run_dir}`." in output and "in use" not in output
    assert digest(ledger) == before and not (run_dir / "queries").exists()


def test_asked_regions_show_as_a_row_and_the_ways_to_answer_them(run_dir):
    with ActiveLearningRun(run_dir) as active_run:
        active_run.acquire(0)
        asked = len(active_run.ledger.asked())
    RunFolder(run_dir).unlock()
    output = status(run_dir)
    row = next(line for line in output.splitlines() if f"{asked} waiting" in line)
    assert row.split("│")[1].strip() == "0"
    assert f"{asked} regions asked, waiting for answers" in output and f"`s4al skip {run_dir}`" in output
    assert (f"`s4al query {run_dir}` writes the tasks (with `--label-studio URL`, sends them to a Label Studio "
            "server)") in " ".join(output.split())
    assert "Continue with" not in output


def test_a_run_with_a_label_studio_project_is_told_to_answer_there(run_dir):
    with ActiveLearningRun(run_dir) as active_run:
        active_run.acquire(0)
        active_run.ledger.set_meta(PROJECT_META, {"url": "http://127.0.0.1:8080", "id": 7})
    RunFolder(run_dir).unlock()
    output = " ".join(status(run_dir).split())  # one line, however the terminal wraps it
    assert (f"answer in Label Studio, http://127.0.0.1:8080/projects/7 (`s4al query {run_dir} --label-studio "
            f"http://127.0.0.1:8080` sends a cycle's tasks), then `s4al import {run_dir} --label-studio`") in output


def test_an_oracle_run_stopped_while_answering_is_told_to_resume_and_refuses_a_skip_or_an_import(tmp_path):
    """Asked regions of a run the ground truth answers wait for the resume, not for a person: a
    skip or an import would change what the experiment measures."""
    run = tmp_path / "run"
    cfg = external_config().model_copy(deep=True)
    cfg.active.annotator = "oracle"
    with ActiveLearningRun(run, cfg) as active_run:
        active_run._train(0)
        active_run.acquire(0)  # stopped here: the oracle answers as the cycle's answer phase runs
        asked = len(active_run.ledger.asked())
    RunFolder(run).unlock()
    output = " ".join(status(run).split())
    assert f"{asked} regions asked: the dataset's ground truth answers them as the run resumes" in output
    assert "s4al skip" not in output and "s4al import" not in output and "waiting for answers" not in output
    assert f"Continue with `s4al run --resume {run}`." in output
    before = digest(run / "ledger.sqlite")
    answers = tmp_path / "answers"
    answers.mkdir()
    for command in (["skip", str(run)], ["skip", str(run), "--region", "1"], ["import", str(run), str(answers)]):
        result = CliRunner().invoke(app, command, env=WIDE)
        assert result.exit_code == 1, result.output
        assert "the dataset's ground truth answers this run's regions as it resumes" in result.output
        assert "nothing written" in result.output
    assert digest(run / "ledger.sqlite") == before


def test_a_cycle_whose_asked_regions_are_all_answered_keeps_its_row_until_the_run_goes_on(run_dir):
    with ActiveLearningRun(run_dir) as active_run:
        active_run.acquire(0)
        asked = active_run.ledger.asked()
        active_run.ledger.answer_many([(r.region_id, np.zeros(r.shape, np.uint8)) for r in asked[1:]], by="test")
        active_run.ledger.skip([asked[0].region_id], by="test")
    RunFolder(run_dir).unlock()
    output = status(run_dir)
    row = next(line for line in output.splitlines() if line.count("│") > 2 and line.split("│")[1].strip() == "0")
    assert row.split("│")[4].strip() == f"{len(asked) - 1} answered, 1 skipped"
    assert "every region cycle 0 asked is answered or skipped." in output


def test_an_answered_region_whose_stored_answer_file_is_gone_is_named_with_how_to_write_it_again(run_dir):
    with ActiveLearningRun(run_dir) as active_run:
        active_run.acquire(0)
        asked = active_run.ledger.asked()
        active_run.ledger.answer_many([(r.region_id, np.zeros(r.shape, np.uint8)) for r in asked], by="test")
    RunFolder(run_dir).unlock()
    lost = asked[1]
    (run_dir / "labels" / f"region_{lost.region_id:06d}.png").unlink()
    output = " ".join(status(run_dir).split())  # one line, however the terminal wraps it
    assert (f"1 answered region lost its stored answer, the file missing: region {lost.region_id} (image "
            f"'{lost.image_id}', cycle 0: labels/region_{lost.region_id:06d}.png); `s4al run --resume` refuses until "
            f"`s4al import {run_dir} ANSWERS` writes it again from the masks or Label Studio export that answered "
            "it.") in output
    assert "every region cycle 0 asked is answered or skipped." in output
    assert output.endswith(f"Once the lost answers are written again, continue with `s4al run --resume {run_dir}`.")


@pytest.mark.parametrize("cycle_0", ["answered", "summarised", "done"])
def test_a_lost_answer_of_an_image_labelled_whole_since_stops_nothing_once_its_cycle_is_done(run_dir, cycle_0):
    with ActiveLearningRun(run_dir) as active_run:
        active_run.acquire(0)
        asked = active_run.ledger.asked()
        active_run.ledger.answer_many([(r.region_id, np.zeros(r.shape, np.uint8)) for r in asked], by="test")
        lost = asked[1]
        if cycle_0 == "summarised":
            active_run._write_summary(0)  # and stopped before 'done': the resume writes it again
        if cycle_0 == "done":
            active_run._answer(0)  # what cycle 0 bought is counted: nothing reads the answer again
        active_run.ledger.label_whole([lost.image_id])  # a mask given to its image since
    RunFolder(run_dir).unlock()
    (run_dir / "labels" / f"region_{lost.region_id:06d}.png").unlink()
    output = " ".join(status(run_dir).split())
    missing = (f"1 answered region lost its stored answer, the file missing: region {lost.region_id} (image "
               f"'{lost.image_id}', cycle 0: labels/region_{lost.region_id:06d}.png); ")
    if cycle_0 == "done":
        assert (missing + "the run goes on without it, its image labelled whole since; the cycle summary counting "
                f"it is kept, and `s4al import {run_dir} ANSWERS` can write it again from the masks or Label Studio "
                "export that answered it.") in output
        assert output.endswith(f"Continue with `s4al run --resume {run_dir}`.")
        with ActiveLearningRun(run_dir) as active_run:
            active_run.run()
            assert active_run.phases.phase(1) == "answer"  # cycle 1 trained and asked
    else:
        assert missing + "`s4al run --resume` refuses until" in output
        assert output.endswith(f"Once the lost answers are written again, continue with `s4al run --resume {run_dir}`.")
        with ActiveLearningRun(run_dir) as active_run, pytest.raises(LedgerError, match="missing or unreadable"):
            active_run.run()


def test_a_run_stopped_as_it_finished_a_cycle_shows_that_cycle_once(run_dir):
    with ActiveLearningRun(run_dir) as active_run:
        active_run.acquire(0)
        active_run.ledger.answer_many([(r.region_id, np.zeros(r.shape, np.uint8)) for r in active_run.ledger.asked()],
                                      by="test")
        active_run._write_summary(0)  # and stopped before the cycle was marked done
        answered = len(active_run.ledger.answered())
    RunFolder(run_dir).unlock()
    rows = [line for line in status(run_dir).splitlines() if line.count("│") > 2 and line.split("│")[1].strip() == "0"]
    assert len(rows) == 1 and rows[0].split("│")[4].strip() == str(answered)
    assert [c["cycle"] for c in read_cycles(run_dir)] == [0] and "bought" in read_cycles(run_dir)[0]


def run_with_phases(run_dir, cfg, phases_by_cycle):
    """A run folder whose ledger records `phases_by_cycle` ({cycle: last phase}), each cycle walked there in order."""
    RunFolder.create(run_dir, cfg, lock=False)
    with Ledger(run_dir / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        ledger.register_images([("a", 4, 4)], initial={"a"})
        for cycle, last in phases_by_cycle.items():
            order = ("train", "done") if cycle == cfg.active.cycles else ("train", "acquire", "answer", "done")
            for phase in order[:order.index(last) + 1]:
                phases.set_phase(cycle, phase)
    return run_dir


def test_a_cycle_in_training_says_its_last_evaluation_of_its_epochs(tmp_path):
    cfg = tiny_config(train={"epochs": 10}, active={"cycles": 1, "final_cycle_epoch_multiplier": 2.0})
    run_dir = run_with_phases(tmp_path / "run", cfg, {0: "done", 1: "train"})
    records = [{"cycle": 0, "epoch": 9, "miou": 0.5}, {"cycle": 1, "epoch": 3, "miou": 0.25},
               {"cycle": 1, "epoch": 4, "miou": 0.375}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cycle": 1, "ep')
    output = status(run_dir)  # the last line, cut by a kill, is passed over; the final cycle trains 2 x 10 epochs
    assert "cycle 1 stopped while training: last evaluated after epoch 4 of 20, val mIoU 37.5%." in output
    # its ledger's one image is not in the synthetic dataset: a resume would be refused, said above
    assert "`s4al run --resume` refuses: synthetic, split 'train': image 'a': in this run's ledger but no longer" in output
    assert output.endswith(f"Once the dataset is as said above, continue with `s4al run --resume {run_dir}`.\n")
    folder = RunFolder(run_dir)
    folder.lock()  # a run at work on it
    try:
        assert "cycle 1 is training: last evaluated after epoch 4 of 20" in status(run_dir)
    finally:
        folder.unlock()
    (run_dir / "metrics.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert "cycle 1 stopped while training: no evaluation yet (of 20 epochs)." in status(run_dir)
    new = run_with_phases(tmp_path / "new", cfg, {})  # made, killed before cycle 0 began
    assert "cycle 0 has not begun training: no evaluation yet (of 10 epochs)." in status(new)


PARTS = {"student": {}, "teacher": {}, "config": {}, "classes": []}  # what every checkpoint holds, empty here


def test_a_cycle_stopped_while_training_under_torchrun_is_told_to_resume_on_as_many_processes(tmp_path):
    cfg = tiny_config(active={"cycles": 1})
    run_dir = run_with_phases(tmp_path / "run", cfg, {0: "done", 1: "train"})
    checkpoint = RunFolder(run_dir).checkpoint_path(1)
    checkpoint.parent.mkdir(exist_ok=True)
    torch.save({**PARTS, "step": 30, "total_steps": 80, "processes": 4}, checkpoint)
    said = f"Once the dataset is as said above, continue with `s4al run --resume {run_dir}`"
    assert status(run_dir).endswith(f"{said} under torchrun with 4 processes in all, as many as trained the cycle's "
                                    "checkpoint (a cycle resumes on as many).\n")
    (run_dir / "starts.jsonl").write_text(json.dumps({"processes": 2}) + "\n")  # a start refused for its count
    torch.save({**PARTS, "step": 30, "total_steps": 80, "processes": 1}, checkpoint)
    assert status(run_dir).endswith(f"{said}.\n")
    torch.save({**PARTS, "step": 80, "total_steps": 80, "processes": 4}, checkpoint)  # finished: it trains no more
    assert status(run_dir).endswith(f"{said}.\n")
    checkpoint.write_bytes(b"cut")  # unreadable: the resume says why
    assert status(run_dir).endswith(f"{said}.\n")


def test_a_finished_run_says_how_to_give_it_more_cycles(tmp_path):
    run_dir = run_with_phases(tmp_path / "run", tiny_config(active={"cycles": 1}), {0: "done", 1: "done"})
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.register_images([("b", 4, 4)], initial=set())
        ledger.ask(0, [("b", (0, 0, 2, 2), "entropy", 1.0)])  # the pool had something to ask
    output = status(run_dir)
    assert "The run has finished its last cycle (1)." in output and "--set active.cycles=2" in output
    assert "Continue with" not in output


def test_a_process_at_work_on_the_run_is_named_and_no_resume_is_suggested(run_dir):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from s4al.run_folder import RunFolder
        RunFolder(Path({str(run_dir)!r})).lock()
        print("locked", flush=True)
        time.sleep(60)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        output = status(run_dir)
        assert (f"in use by process {holder.pid} on {socket.gethostname()} now (a run, an import, a query or a skip): "
                "wait for it to end") in output  # the host too: a run folder may be shared by the nodes of a cluster
        assert "Continue with" not in output
    finally:
        holder.kill()
        holder.wait()
    assert RunFolder(run_dir).holder() is None


def test_status_of_a_folder_that_is_no_run_is_an_error_naming_it(tmp_path):
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 1 and f"{tmp_path}: not a run folder (no ledger.sqlite)" in result.output
    RunFolder.create(tmp_path / "run", external_config(), lock=False)  # a start killed at once: its config alone
    result = CliRunner().invoke(app, ["status", str(tmp_path / "run")], env=WIDE)
    assert result.exit_code == 1 and (f"{tmp_path / 'run'}: a run that never began (its config.yaml alone: a start "
                                      f"refused or killed at once); `s4al run --resume {tmp_path / 'run'}` begins it"
                                      ) in result.output


def test_a_begun_run_without_its_ledger_and_a_training_folder_are_told_apart_from_no_run(run_dir, tmp_path):
    (run_dir / "ledger.sqlite").unlink()
    missing = CliRunner().invoke(app, ["status", str(run_dir)], env=WIDE)
    assert missing.exit_code == 1
    assert (f"{run_dir / 'ledger.sqlite'}: missing, though this run has begun (checkpoints/, splits/ on disk); "
            "its answers were in it. Restore it from a backup; nothing was changed") in missing.output
    training = tmp_path / "training"
    (training / "checkpoints").mkdir(parents=True)
    refused = CliRunner().invoke(app, ["status", str(training)], env=WIDE)
    assert refused.exit_code == 1 and (f"{training}: a folder of `s4al train` (full supervision: checkpoints/ but no "
                                       f"ledger, splits/ or cycles/), not an active-learning run (stopped part-way, it "
                                       f"goes on with `s4al train --out {training}` and the same --config and --set)"
                                       ) in refused.output
    (training / "result.json").write_text("{}")
    refused = CliRunner().invoke(app, ["status", str(training)], env=WIDE)
    assert f"not an active-learning run (its result is {training / 'result.json'}); start one" in refused.output


def test_a_damaged_config_is_refused_before_any_of_the_account_is_printed(run_dir):
    for damaged in (b"model: [\n", b"seed: 3108\nmodel: \xff\xfe\n"):  # no YAML; no UTF-8 text
        (run_dir / "config.yaml").write_bytes(damaged)
        result = CliRunner().invoke(app, ["status", str(run_dir)], env=WIDE)
        assert result.exit_code == 1 and result.output.startswith(f"error: {run_dir / 'config.yaml'}: cannot read config")


def test_a_ledger_damaged_in_its_pages_is_one_error_saying_so(run_dir):
    ledger = run_dir / "ledger.sqlite"
    content = bytearray(ledger.read_bytes())
    page = 4096  # SQLite's page size here; the first page holds the schema, and stays
    content[page:] = bytes([0x5A]) * (len(content) - page)
    ledger.write_bytes(bytes(content))
    result = CliRunner().invoke(app, ["status", str(run_dir)], env=WIDE)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(r"^error: .*damaged \(database disk image is malformed\);? .*restore it from a copy", result.output)


def test_a_config_edited_since_the_run_was_made_is_said_where_its_settings_are_shown(run_dir, tmp_path):
    from s4al.report.compare import compare_runs
    from s4al.report.html import write_report

    with ActiveLearningRun(run_dir) as active_run:  # a cycle done, for compare
        active_run.run()
    RunFolder(run_dir).unlock()
    other = shutil.copytree(run_dir, tmp_path / "other")
    assert "edited since" not in status(run_dir) and compare_runs([run_dir, other], tmp_path / "c0").notes == []
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.01", "lr: 0.5"))  # a resume refuses it
    note = (f"{config} was edited since the run was made (it no longer matches the digest in "
            f"{run_dir / 'ledger.sqlite'}): the settings shown are the file's, not those the run was made with")
    said = " ".join(status(run_dir).split())
    assert note in said and ("`s4al run --resume` refuses config.yaml as it is now: put back the file the run was "
                             "made with first (the note above).") in said
    page = " ".join(write_report(run_dir, tmp_path / "report").read_text().split())
    assert note.replace("'", "&#39;") in page
    compared = compare_runs([run_dir, other], tmp_path / "c1")
    assert compared.settings == {"train.lr": ["0.5", "0.01"]} and any(n.startswith(note) for n in compared.notes)
    config.write_text(config.read_text() + "# a comment changes nothing it says\n")
    assert "edited since" in status(run_dir)
    config.write_text(config.read_text().replace("lr: 0.5", "lr: 0.01"))
    assert "edited since" not in status(run_dir)


def test_a_command_suggested_for_a_folder_with_a_space_quotes_it(tmp_path):
    from s4al.annotation.commands import _skip_command
    from s4al.report.status import finished_line

    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.register_images([("a", 32, 32)], initial=set())
        ledger.ask(1, [("a", (0, 0, 16, 16), "entropy", 1.0)])  # the last cycle that asked found something
        assert "`s4al run --resume 'runs/my run' --set active.cycles=3`" in finished_line(Path("runs/my run"), 2, ledger)
    assert _skip_command(Path("runs/my run"), [3, 5]) == "s4al skip 'runs/my run' --region 3 --region 5"
    assert _skip_command(Path("runs/mine"), [3]) == "s4al skip runs/mine --region 3"  # quoted only where needed


def test_a_run_whose_pool_has_nothing_left_to_ask_says_so_as_it_asks_and_once_finished(tmp_path):
    """Four pool images of 2 cells each (48x64 in cells of 32), 2 asked per image a cycle: cycle 1
    asks the last ones, cycle 2 finds nothing; the run says so, and its status suggests no more cycles."""
    cfg = cycle_config(dataset={"synthetic": {"num_train": 5, "num_val": 2, "height": 48, "width": 64}},
                       active={"cycles": 3, "region_size": 32, "regions_per_image": 2, "initial_fraction": 0.2})
    with pytest.warns(S4alWarning) as said, ActiveLearningRun(tmp_path / "run", cfg) as run:
        run.run()
    assert [str(w.message) for w in said if "asked nothing" in str(w.message)] == [
        "cycle 2 asked nothing: the pool has nothing left to ask (every image labelled or every region of it asked); "
        "the cycles after it train on the same labels"]
    with Ledger(tmp_path / "run" / "ledger.sqlite", readonly=True) as ledger:
        assert [len(ledger.regions(cycle)) for cycle in range(3)] == [8, 8, 0]
    output = " ".join(CliRunner().invoke(app, ["status", str(tmp_path / "run")], env=WIDE).output.split())
    assert ("The run has finished its last cycle (3); its pool had nothing left to ask by cycle 2: every image is "
            "labelled or every region of it asked.") in output and "--set active.cycles" not in output
