"""`s4al run` killed with SIGKILL mid-training and mid-acquisition, then `s4al run --resume`, ends
with the same ledger (regions, scores, label PNGs, image states, per-cycle metrics apart from
timings) and the same final weights as an uninterrupted run of the same config and seed.

The runs are real `python -m s4al.cli run` subprocesses; the test watches the run folder (the
checkpoint files and the ledger's phase of cycle 0) and kills the process from outside."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from s4al.active.cycle import ActiveLearningRun
from s4al.cli import app
from s4al.config import save_config
from s4al.run_folder import RunFolder
from test_cycle import ledger_snapshot

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 300  # seconds; a whole run takes ~10 s here
CYCLE0_STEPS = 12  # 3 epochs of 4 steps, a checkpoint after each epoch


def resume_config(fast: str = "off"):
    """SSL on (cold start, mean teacher, ClassMix, Balanced-ClassMix replay from cycle 0), 2 cycles.
    A pool of 36 images keeps the acquisition phase (scoring, asking, answering) about a second long.
    `fast` on: training, scoring and evaluation read the device cache, as on a GPU by default."""
    return tiny_config(
        dataset={"synthetic": {"num_train": 40, "num_val": 4, "height": 48, "width": 64}},
        train={"epochs": 3, "iters_per_epoch": 4, "checkpoint_every": 1, "eval_every": 1, "device": "cpu",
               "fast": fast},
        ssl={"confidence_threshold": 0.5},
        active={"cycles": 1, "initial_fraction": 0.1, "final_cycle_epoch_multiplier": 1.0, "metric": "entropy"},
    )


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    # One OpenMP thread: on a few shared cores, waiting threads make small CPU ops ~100x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = open(run_dir.parent / f"{run_dir.name}.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "s4al.cli", "run", *args, "--quiet"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def finish(process: subprocess.Popen, run_dir: Path) -> None:
    try:
        code = process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    log = (run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace")
    assert code == 0, f"s4al run exited with {code}:\n{log[-3000:]}"


def phase(run_dir: Path, cycle: int) -> str | None:
    """The ledger's phase of `cycle`, read without the write lock; None if not there yet."""
    path = run_dir / "ledger.sqlite"
    if not path.exists():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = connection.execute("SELECT phase FROM cycles WHERE cycle = ?", (cycle,)).fetchone()
        finally:
            connection.close()
    except sqlite3.Error:  # the schema is not written yet
        return None
    return None if row is None else row[0]


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = RUN_TIMEOUT) -> bool:
    """SIGKILL `process` as soon as `ready()`; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail("timed out waiting for the moment to kill the run")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def killed_run(config: Path, folder: Path, ready: Callable[[Path], bool], killed_in_time: Callable[[Path], bool]):
    """A new run killed when `ready(run_dir)`. The kill is checked with `killed_in_time(run_dir)`:
    when the run got past the intended moment first (a loaded machine), it is tried again."""
    for attempt in range(3):
        run = folder / f"run{attempt}"
        process = start(run, "--out", str(run), "--config", str(config))
        if kill_when(process, lambda: ready(run)) and killed_in_time(run):
            return run
    pytest.fail("3 runs got past the intended moment before they could be killed")


def evaluated_epochs(run_dir: Path, cycle: int) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in records if r["cycle"] == cycle]


def final_weights(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoints" / "cycle_1.pt", map_location="cpu", weights_only=False)
    return {"student": state["student"], "teacher": state["teacher"], "step": state["step"]}


def assert_same_run(resumed: Path, reference: Path) -> None:
    got, want = ledger_snapshot(resumed), ledger_snapshot(reference)
    assert want["regions"] and all(r[6] == "answered" for r in want["regions"])
    assert got["regions"] == want["regions"]  # image_id, box, cycle, metric, score, state
    assert got["labels"] == want["labels"]  # the label PNG contents
    assert got == want  # and images, phases, per-cycle metrics and summaries apart from timings
    a, b = final_weights(resumed), final_weights(reference)
    assert a["step"] == b["step"]
    for network in ("student", "teacher"):
        for name, tensor in b[network].items():
            assert torch.equal(a[network][name], tensor), f"{network}.{name}"


@pytest.fixture(scope="module", params=["off", "on"], ids=["loaders", "fast"])
def setup(tmp_path_factory, request):
    """The config file and an uninterrupted reference run, on the loader path and on the fast path."""
    root = tmp_path_factory.mktemp("resume")
    config = root / "tiny.yaml"
    save_config(resume_config(request.param), config)
    reference = root / "reference"
    finish(start(reference, "--out", str(reference), "--config", str(config)), reference)
    assert [phase(reference, c) for c in (0, 1)] == ["done", "done"]
    return config, reference


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(setup, tmp_path):
    config, reference = setup
    def checkpointed(run: Path) -> bool:
        return (run / "checkpoints" / "cycle_0.pt").exists()

    def mid_training(run: Path) -> bool:  # after a checkpoint, before the last step of cycle 0
        step = torch.load(run / "checkpoints" / "cycle_0.pt", map_location="cpu", weights_only=False)["step"]
        return phase(run, 0) == "train" and 0 < step < CYCLE0_STEPS

    run = killed_run(config, tmp_path, checkpointed, mid_training)

    finish(start(run, "--resume", str(run)), run)
    assert_same_run(run, reference)
    # training went on from the checkpoint instead of starting cycle 0 again
    assert evaluated_epochs(run, 0).count(1) == 1
    assert evaluated_epochs(run, 0)[-1] == 3


def test_sigkill_mid_acquisition_then_resume_equals_an_uninterrupted_run(setup, tmp_path):
    config, reference = setup
    def acquiring(run: Path) -> bool:  # cycle 0 trained, its answers not all in yet
        return phase(run, 0) in ("acquire", "answer")

    run = killed_run(config, tmp_path, acquiring, acquiring)
    assert phase(run, 1) is None

    finish(start(run, "--resume", str(run)), run)
    assert_same_run(run, reference)
    assert evaluated_epochs(run, 0) == [1, 2, 3]  # cycle 0 was not trained again


def test_a_resume_that_finds_an_answer_file_lost_names_its_region_image_and_cycle_and_how_to_write_it_again(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(active={"annotator": "external", "cycles": 1}, train={"epochs": 1, "iters_per_epoch": 1,
                      "device": "cpu"}, ssl={"cold_start_epochs": 0})
    with ActiveLearningRun(run_dir, cfg) as active_run:
        active_run._train(0)
        active_run.acquire(0)
        asked = active_run.ledger.asked()
        active_run.ledger.answer_many([(r.region_id, np.zeros(r.shape, np.uint8)) for r in asked], by="test")
    RunFolder(run_dir).unlock()
    lost = asked[-1]
    path = run_dir / "labels" / f"region_{lost.region_id:06d}.png"
    path.unlink()
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--quiet"], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert result.output.endswith(
        f"error: {path}: the stored answer of region {lost.region_id} (image '{lost.image_id}', cycle 0) is missing "
        f"or unreadable (No such file or directory); import its answer again to write it anew: `s4al import {run_dir} "
        f"ANSWERS`, with the masks or Label Studio export that answered it (or a folder holding the image's label as "
        f"{lost.image_id}.png)\n")
