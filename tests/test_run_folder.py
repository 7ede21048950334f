"""The run folder keeps what a run stored: a lost or damaged ledger or config is refused, never
replaced by a fresh one; one process at a time; a run killed in its first moments resumes; every
refusal is a message that names the file."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import Ledger
from s4al.cli import app
from s4al.config import config_text, save_config
from s4al.data import DatasetError
from s4al.errors import S4alWarning
from s4al.run_folder import RunFolder, RunFolderError
from s4al.train.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def external_config():
    """Trains cycle 0 in a few steps, asks, and waits for a person's answers."""
    return tiny_config(train={"epochs": 1, "iters_per_epoch": 1, "device": "cpu"},
                       ssl={"enabled": False}, active={"annotator": "external"})


@pytest.fixture(scope="module")
def asked_run(tmp_path_factory) -> Path:
    """A run folder whose cycle 0 has trained and asked; one region answered by hand."""
    run_dir = tmp_path_factory.mktemp("asked") / "run"
    active_run = ActiveLearningRun(run_dir, external_config())
    assert active_run.run() == []
    region = active_run.ledger.asked()[0]
    active_run.ledger.answer(region.region_id, torch.ones(region.shape, dtype=torch.uint8).numpy(), by="person")
    RunFolder(run_dir).unlock()
    return run_dir


@pytest.fixture
def run_dir(asked_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(asked_run, copy)
    return copy


def label_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "labels").iterdir())}


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_ledger_is_refused_and_the_answers_on_disk_are_untouched(run_dir, damage):
    labels = label_files(run_dir)
    assert labels  # the answer of the fixture
    ledger = run_dir / "ledger.sqlite"
    for side in run_dir.glob("ledger.sqlite-*"):
        side.unlink()
    ledger.unlink() if damage == "deleted" else ledger.write_bytes(b"")
    with pytest.raises(RunFolderError, match="ledger.sqlite: (missing|empty)"):
        ActiveLearningRun(run_dir)
    assert label_files(run_dir) == labels
    assert (ledger.stat().st_size == 0) if damage == "emptied" else not ledger.exists()


def test_a_ledger_of_random_bytes_is_a_message_naming_the_file(run_dir):
    (run_dir / "ledger.sqlite").write_bytes(os.urandom(4096))
    for side in run_dir.glob("ledger.sqlite-*"):
        side.unlink()
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 1
    assert "ledger.sqlite: not a label ledger" in result.output and "Traceback" not in result.output


def test_a_config_cut_short_is_refused_on_resume(run_dir):
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().split("active:")[0])  # an external-annotator run without its section
    with pytest.raises(RunFolderError, match="config.yaml: incomplete saved config, missing active"):
        ActiveLearningRun(run_dir)


def test_a_config_changed_after_the_run_was_made_is_refused(run_dir):
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("annotator: external", "annotator: oracle"))
    with pytest.raises(RunFolderError, match="config.yaml: changed since the run was made"):
        ActiveLearningRun(run_dir)


def test_an_image_removed_from_the_dataset_between_cycles_is_named(tmp_path):
    from test_own_data import make_dataset, own_config

    make_dataset(tmp_path / "data")
    cfg = own_config(tmp_path / "data")
    ActiveLearningRun(tmp_path / "run", cfg).run()
    (tmp_path / "data" / "images" / "p3.png").unlink()  # and from the split's list, so the dataset is consistent
    split = tmp_path / "data" / "train.txt"
    split.write_text(split.read_text().replace("p3\n", ""))
    with pytest.raises(DatasetError, match="image 'p3': in this run's ledger but no longer in the dataset"):
        ActiveLearningRun(tmp_path / "run")


def test_a_damaged_previous_checkpoint_is_a_message_naming_it(run_dir):
    checkpoint = run_dir / "checkpoints" / "cycle_0.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    active_run = ActiveLearningRun(run_dir)
    active_run.cfg.active.reinit_each_cycle = False
    with pytest.raises(ValueError, match="cycle_0.pt: cannot read checkpoint"):
        active_run.initial_student(1)


def test_a_checkpoint_whose_bytes_changed_on_disk_is_refused_not_read_as_weights(run_dir):
    """torch.load reads a tensor whose bytes were zeroed without a word; the CRC-32 each part of the
    archive carries tells, and the file is refused naming the part."""
    checkpoint = run_dir / "checkpoints" / "cycle_0.pt"
    load_checkpoint(checkpoint)
    with zipfile.ZipFile(checkpoint) as archive:  # the largest tensor's bytes, where they lie in the file
        part = max(archive.infolist(), key=lambda info: info.file_size)
    content = bytearray(checkpoint.read_bytes())
    start = content.index(zipfile.ZipFile(checkpoint).read(part.filename)[:64])
    content[start + 100:start + 4196] = bytes(4096)
    checkpoint.write_bytes(bytes(content))
    assert torch.load(checkpoint, weights_only=True)  # read all the same
    with pytest.raises(ValueError, match=rf"cycle_0.pt: damaged: its part '{part.filename}' no longer matches the "
                                         "checksum written with it"):
        load_checkpoint(checkpoint)
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint)], env={"COLUMNS": "250"})
    assert result.exit_code == 1 and result.output.startswith(f"error: {checkpoint}: damaged: ")


def test_a_second_process_is_refused_while_the_first_holds_the_folder(run_dir):
    holder = subprocess.Popen(  # locks, then forks a child (as loader workers are) that outlives it
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, sys, time
            from s4al.run_folder import RunFolder
            RunFolder(__import__("pathlib").Path({str(run_dir)!r})).lock()
            child = os.fork()
            if child == 0:
                time.sleep(60)
                os._exit(0)
            print("locked", child, flush=True)
            time.sleep(60)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        said, child = holder.stdout.readline().split()
        assert said == "locked"
        result = runner.invoke(app, ["run", "--resume", str(run_dir), "--quiet"])
        assert result.exit_code == 1 and f"in use by process {holder.pid}" in result.output
        with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
            asked = len(ledger.asked())
        skipped = runner.invoke(app, ["skip", str(run_dir)])  # the ledger's other writers wait for the run too
        assert skipped.exit_code == 1 and f"in use by process {holder.pid}" in skipped.output
        with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
            assert len(ledger.asked()) == asked > 0
    finally:
        holder.kill()
        holder.wait()
    try:
        RunFolder(run_dir).lock()  # the lock went with the killed process, though its child lives on
        RunFolder(run_dir).unlock()
    finally:
        if child is not None:
            os.kill(int(child), 9)


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "checkpoints" / "cycle_0.pt"
    kept = {"step": 1, "student": {}, "teacher": {}, "config": {}, "classes": []}
    save_checkpoint(kept, path)
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from pathlib import Path
        from s4al.train.checkpoint import CheckpointError, save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            save_checkpoint({{"step": 2, "weights": torch.zeros(1_000_000)}}, Path({str(path)!r}))
        except CheckpointError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "cycle_0.pt: cannot write checkpoint" in out.stdout and "the previous checkpoint is kept" in out.stdout, out
    assert load_checkpoint(path) == kept
    assert [p.name for p in path.parent.iterdir()] == ["cycle_0.pt"]


def test_resume_refuses_config_changes_but_takes_the_device(run_dir):
    refused = runner.invoke(app, ["run", "--resume", str(run_dir), "--set", "train.lr=0.5", "--quiet"])
    assert refused.exit_code == 1 and "--set train.lr refused" in refused.output
    refused = runner.invoke(app, ["run", "--resume", str(run_dir), "--config", "camvid"])
    assert refused.exit_code != 0 and "a resumed run keeps the config" in refused.output
    taken = runner.invoke(app, ["run", "--resume", str(run_dir), "--set", "train.device=cpu", "--quiet"])
    assert taken.exit_code == 0, taken.output
    assert "train.device" not in (run_dir / "config.yaml").read_text().split("device:")[0]  # the file is as made


def test_resume_of_a_mistyped_path_creates_nothing(tmp_path):
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "rnu"), "--quiet"])
    assert result.exit_code == 1 and "rnu: no such run folder" in result.output
    assert not (tmp_path / "rnu").exists()


def test_out_on_a_folder_that_holds_a_run_is_refused_not_resumed(tmp_path):
    made = ActiveLearningRun(tmp_path / "run", external_config())
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--quiet"])
    words = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "already holds a run; continue it with --resume" in words
    assert made.phases.phase(0) is None and not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    assert ("(it has trained nothing and asked nothing: to start it again with other settings, delete the folder "
            "first)") in words


def test_out_pointing_at_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "notes.txt"), "--quiet"])
    assert result.exit_code == 1 and "notes.txt: exists and is not a folder" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("left", ["config only", "half-made ledger"])
def test_a_run_killed_in_its_first_moments_resumes(tmp_path, left):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(external_config(), run_dir / "config.yaml")  # what `run --out` writes first
    if left == "half-made ledger":
        Ledger(run_dir / ".ledger.sqlite.new").close()  # a kill while the ledger was being built
    assert ActiveLearningRun(run_dir).run() == []
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        assert ledger.asked() and ledger.get_meta("seed") == external_config().seed
    assert not (run_dir / ".ledger.sqlite.new").exists()


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS])
def test_a_filesystem_that_serves_no_file_locks_is_named_and_the_run_not_begun(tmp_path, monkeypatch, code):
    def no_locks(fd, operation):  # NFS without its lock daemon (ENOLCK), Lustre mounted without flock (ENOSYS)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("s4al.run_folder.fcntl.flock", no_locks)
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--quiet"], env={"COLUMNS": "500"})
    assert result.exit_code == 1 and result.output.startswith(
        f"error: {tmp_path / 'run'}: its filesystem serves no file locks ({os.strerror(code)}), which keep a second "
        "process from writing the run at once; put the run folder on a disk that serves them")
    assert not (tmp_path / "run" / "ledger.sqlite").exists()


def test_a_ledger_older_than_the_answers_beside_it_is_named_as_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    assert ActiveLearningRun(run_dir, external_config()).run() == []  # cycle 0 trained and asked
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        last = max(region.region_id for region in ledger.regions())
    (run_dir / "labels").mkdir(exist_ok=True)
    later = run_dir / "labels" / f"region_{last + 3:06d}.png"  # as a later state of the run wrote it
    later.write_bytes(b"an answer")
    with pytest.warns(S4alWarning, match=f"ledger.sqlite: older than the answers in labels/{later.name}, of regions "
                                         "it does not hold \\(a ledger put back from a backup\\?\\)"):
        with ActiveLearningRun(run_dir) as run:
            run.run()
    assert later.read_bytes() == b"an answer"


def test_a_temp_file_of_a_run_killed_as_it_wrote_its_config_is_removed_as_the_run_is_made_again(tmp_path):
    stray = tmp_path / "run" / ".config.yaml.q9.tmp"
    stray.parent.mkdir()
    stray.write_bytes(b"half a config")
    RunFolder.create(tmp_path / "run", external_config(), lock=False)
    assert not stray.exists() and (tmp_path / "run" / "config.yaml").is_file()


def test_temp_files_of_a_killed_run_are_removed_when_the_run_is_opened(run_dir):
    (run_dir / "cycles").mkdir(exist_ok=True)
    (run_dir / "answers").mkdir()
    strays = [run_dir / "checkpoints" / ".cycle_1.pt.abc123.tmp", run_dir / "cycles" / ".cycle_0.json.x7.tmp",
              run_dir / "answers" / ".label_studio_20261206T070000000000Z.json.q1.tmp", run_dir / ".metrics.jsonl.k2.tmp", run_dir / ".config.yaml.q9.tmp", run_dir / ".ledger.sqlite.new"]
    kept = [run_dir / "checkpoints" / "notes.tmp"]
    for path in strays + kept:
        path.write_bytes(b"half a file")
    ActiveLearningRun(run_dir)
    assert [path.exists() for path in strays + kept] == [False] * len(strays) + [True]
    assert (run_dir / "checkpoints" / "cycle_0.pt").exists()


def test_cycle_summaries_come_in_numeric_order(tmp_path):
    folder = RunFolder(tmp_path)
    folder.cycles_dir.mkdir()
    for cycle in (0, 1, 2, 9, 10, 11):
        folder.cycle_summary_path(cycle).write_text(f'{{"cycle": {cycle}}}')
    assert [s["cycle"] for s in folder.summaries()] == [0, 1, 2, 9, 10, 11]
    folder.cycle_summary_path(9).write_text('{"cycle": 9, "val": ')  # a summary edited by hand and cut
    with pytest.raises(RunFolderError, match=r"cycle_9\.json: not a cycle summary"):
        folder.summaries()


def test_the_run_folder_starts_with_its_config(tmp_path):
    cfg = external_config()
    folder = RunFolder.create(tmp_path / "run", cfg)
    assert sorted(p.name for p in folder.path.iterdir()) == [".lock", "config.yaml"]
    assert folder.config_path.read_text() == config_text(cfg)
    Ledger(folder.ledger_path).close()  # the run has begun
    with pytest.raises(RunFolderError, match="already holds a run"):
        RunFolder.create(tmp_path / "run", cfg)


def test_train_command_writes_its_result_and_a_second_call_resumes_without_training(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "iters_per_epoch": 2, "device": "cpu"})
    save_config(cfg, tmp_path / "tiny.yaml")
    out = tmp_path / "supervised"
    first = runner.invoke(app, ["train", "--out", str(out), "--config", str(tmp_path / "tiny.yaml"), "--quiet"])
    assert first.exit_code == 0, first.output
    written = (out / "result.json").read_text()
    result = json.loads(written)
    assert result["step"] == 2 and 0 <= result["miou"] <= 1 and "mIoU" in first.output
    checkpoint = RunFolder(out).checkpoint_path(0)
    assert load_checkpoint(checkpoint)["step"] == 2
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())
    saved = checkpoint.stat().st_mtime_ns
    again = runner.invoke(app, ["train", "--out", str(out), "--config", str(tmp_path / "tiny.yaml"), "--quiet"])
    assert again.exit_code == 0 and (out / "result.json").read_text() == written
    assert checkpoint.stat().st_mtime_ns == saved  # resumed at the last step: nothing trained, nothing saved


def test_train_on_an_active_learning_run_folder_is_refused_and_the_run_is_untouched(run_dir, tmp_path):
    save_config(external_config(), tmp_path / "tiny.yaml")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["train", "--out", str(run_dir), "--config", str(tmp_path / "tiny.yaml"), "--quiet"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {run_dir}: holds an active-learning run (ledger.sqlite, labels, splits)")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_train_with_another_config_is_refused_and_only_where_it_computes_may_change(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "iters_per_epoch": 2, "device": "cpu"})
    save_config(cfg, tmp_path / "tiny.yaml")
    out = tmp_path / "supervised"
    command = ["train", "--out", str(out), "--config", str(tmp_path / "tiny.yaml"), "--quiet"]
    assert runner.invoke(app, command).exit_code == 0
    checkpoint, saved = RunFolder(out).checkpoint_path(0), RunFolder(out).config_path.read_text()
    trained = checkpoint.read_bytes()

    refused = runner.invoke(app, [*command, "--set", "train.epochs=2", "--set", "train.lr=0.5"])
    assert refused.exit_code == 1
    assert refused.output.startswith(f"error: {out / 'config.yaml'}: this training was made with another config: "
                                     "train.epochs (1 there, 2 given), train.lr (0.01 there, 0.5 given);")
    assert RunFolder(out).config_path.read_text() == saved and checkpoint.read_bytes() == trained

    moved = runner.invoke(app, [*command, "--set", "train.device=auto", "--set", "train.num_workers=1"])
    assert moved.exit_code == 0, moved.output
    assert "device: auto" in RunFolder(out).config_path.read_text() and checkpoint.read_bytes() == trained


def test_resuming_a_training_folder_as_an_active_learning_run_names_what_it_is(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "iters_per_epoch": 1, "device": "cpu"})
    save_config(cfg, tmp_path / "tiny.yaml")
    out = tmp_path / "supervised"
    assert runner.invoke(app, ["train", "--out", str(out), "--config", str(tmp_path / "tiny.yaml"), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {out}: a folder of `s4al train` (full supervision")
    started = runner.invoke(app, ["run", "--out", str(out), "--quiet"], env={"COLUMNS": "500"})
    assert started.exit_code == 2
    assert f"{out} holds a training of `s4al train`, not an active-learning run; give a new --out" in started.output
    assert not RunFolder(out).ledger_path.exists()


def test_a_start_refused_for_its_settings_can_be_corrected_in_the_same_folder(tmp_path):
    save_config(external_config(), tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    command = ["run", "--out", str(out), "--config", str(tmp_path / "tiny.yaml"), "--quiet"]
    refused = runner.invoke(app, [*command, "--set", "active.initial=labelled"])  # every synthetic image has a label
    assert refused.exit_code == 1 and "active.initial 'labelled' needs some images without a label" in refused.output
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml"]  # nothing began
    corrected = runner.invoke(app, command)
    assert corrected.exit_code == 0, corrected.output
    assert "asked, waiting for answers" in corrected.output
    assert RunFolder(out).config_path.read_text() == config_text(external_config())
    again = runner.invoke(app, command)  # now it has begun: refused, not made anew
    assert again.exit_code == 2 and "already holds a run" in " ".join(again.output.replace("│", " ").split())
    assert "trained nothing" not in " ".join(again.output.replace("│", " ").split())  # a checkpoint, asked regions


def test_a_training_refused_before_its_first_checkpoint_can_be_corrected_in_the_same_folder(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "iters_per_epoch": 1, "device": "cpu"})
    save_config(cfg, tmp_path / "tiny.yaml")
    out = tmp_path / "supervised"
    command = ["train", "--out", str(out), "--config", str(tmp_path / "tiny.yaml"), "--quiet"]
    refused = runner.invoke(app, [*command, "--set", "dataset.name=folder", "--set", f"dataset.root={tmp_path}"])
    assert refused.exit_code == 1 and "no class list" in refused.output
    corrected = runner.invoke(app, command)
    assert corrected.exit_code == 0, corrected.output
    assert RunFolder(out).config_path.read_text() == config_text(cfg) and RunFolder(out).result_path.exists()
