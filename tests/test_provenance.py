"""What a run records of the code and command that made it (s4al/provenance.py): starts.jsonl,
one line per start, and the report's table of them."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import s4al
from s4al import provenance
from s4al.cli import app
from s4al.config import save_config
from s4al.report.html import write_report
from s4al.run_folder import RunFolder
from s4al.train.checkpoint import load_checkpoint, save_checkpoint
from s4al.train.trainer import Trainer
from test_cycle import cycle_config


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git repository at a path with a space, standing for s4al's own checkout: s4al/code.py and
    README.md committed."""
    root = tmp_path / "a checkout"
    (root / "s4al").mkdir(parents=True)
    git(root, "init", "-q")
    (root / "s4al" / "code.py").write_text("x = 1\n")
    (root / "README.md").write_text("# s4al\n")
    git(root, "add", "s4al/code.py", "README.md")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return root


def test_outside_its_own_git_checkout_the_code_is_named_by_its_version_alone(tmp_path, checkout):
    assert provenance.code_version(tmp_path) == {"s4al": s4al.__version__}  # no checkout
    site_packages = checkout / ".venv" / "lib" / "site-packages"  # installed in a venv inside a checkout
    site_packages.mkdir(parents=True)
    assert provenance.code_version(site_packages) == {"s4al": s4al.__version__}


def test_the_code_is_named_by_its_commit_and_each_change_to_it_by_its_own_digest(checkout):
    code = checkout / "s4al" / "code.py"
    clean = provenance.code_version(checkout)
    assert clean == {"s4al": s4al.__version__, "git_commit": git(checkout, "rev-parse", "HEAD"), "git_dirty": False,
                     "git_diff_sha256": None}
    digests = []
    for text in (b"x = 2\n", b"x = 3\n", b"x = 2\n", b"caf\xe9 = 2\n"):  # the last not UTF-8
        code.write_bytes(text)
        changed = provenance.code_version(checkout)
        assert changed["git_commit"] == clean["git_commit"] and changed["git_dirty"] is True
        digests.append(changed["git_diff_sha256"])
    assert len(set(digests)) == 3 and digests[0] == digests[2]  # the same change, the same digest
    code.write_text("x = 1\n")
    (checkout / "README.md").write_text("# s4al, documented\n")  # outside the package: not its code
    (checkout / "scratch.py").write_text("outside the package")
    assert provenance.code_version(checkout) == clean
    (checkout / "s4al" / "naïve_score.py").write_text("y = 1\n")  # a module not yet added, named beyond ASCII
    added = provenance.code_version(checkout)
    (checkout / "s4al" / "naïve_score.py").write_text("y = 2\n")
    assert added["git_dirty"] and provenance.code_version(checkout)["git_diff_sha256"] != added["git_diff_sha256"]


def test_each_start_of_a_run_is_recorded_with_its_command_and_shown_in_the_report(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    save_config(cycle_config(active={"cycles": 0}), config)
    run_dir = tmp_path / "run"
    commands = [["s4al", "run", "--out", str(run_dir), "--config", str(config), "--quiet"],
                ["s4al", "run", "--resume", str(run_dir), "--quiet"]]
    for command in commands:
        monkeypatch.setattr(sys, "argv", command)  # what the process was started with
        result = CliRunner().invoke(app, command[1:])
        assert result.exit_code == 0, result.output
    starts = [json.loads(line) for line in RunFolder(run_dir).starts_log.read_text().splitlines()]
    assert [start["command"] for start in starts] == commands
    assert {(start["device"], start["processes"], start["torch"]) for start in starts} == {("cpu", 1, torch.__version__)}
    try:  # where git cannot read this checkout (not installed, "dubious ownership"), a start names no commit
        commit = git(provenance.PACKAGE_ROOT, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        commit = None
    assert {start.get("git_commit") for start in starts} == {commit}
    page = write_report(run_dir).read_text()
    assert f"s4al run --resume {run_dir} --quiet" in page and f"s4al run --out {run_dir}" in page


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_resume_refused_for_the_processes_that_trained_its_checkpoint_records_no_start(tmp_path, monkeypatch, command):
    config = tmp_path / "config.yaml"
    save_config(cycle_config(train={"epochs": 2, "eval_every": 1, "checkpoint_every": 1}, active={"cycles": 0}), config)
    run_dir = tmp_path / "run"
    evaluate = Trainer._evaluate

    def killed_at_the_second_evaluation(trainer, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        evaluate(trainer, epoch)

    monkeypatch.setattr(Trainer, "_evaluate", killed_at_the_second_evaluation)
    first = [command, "--out", str(run_dir), "--config", str(config), "--quiet"]
    assert CliRunner().invoke(app, first).exit_code != 0
    path = RunFolder(run_dir).checkpoint_path(0)
    state = load_checkpoint(path)
    assert state["step"] == 2 and state["total_steps"] == 4  # the epoch-1 checkpoint
    save_checkpoint({**state, "processes": 4}, path)  # as 4 torchrun processes would have left it
    saved = RunFolder(run_dir).config_path.read_bytes()
    # a resume's change of the cycles would be saved in config.yaml, were it not refused
    again = ["run", "--resume", str(run_dir), "--set", "active.cycles=1", "--quiet"] if command == "run" else first
    result = CliRunner().invoke(app, again)
    assert result.exit_code != 0 and f"{path}: trained on 4 processes, this run has 1" in " ".join(result.output.split())
    assert len(RunFolder(run_dir).starts_log.read_text().splitlines()) == 1
    assert RunFolder(run_dir).config_path.read_bytes() == saved


def test_a_run_made_anew_in_the_folder_of_one_that_never_began_forgets_that_start(tmp_path):
    folder = RunFolder.create(tmp_path, cycle_config(), lock=False)
    provenance.record_start(folder.starts_log, torch.device("cpu"), 1)
    RunFolder.create(tmp_path, cycle_config(), lock=False)
    assert not folder.starts_log.exists()


def test_a_start_that_runs_other_code_than_the_last_one_says_so(tmp_path, monkeypatch):
    clean = {"s4al": "0.1.0", "git_commit": "a" * 40, "git_dirty": False, "git_diff_sha256": None}
    changed = clean | {"git_dirty": True, "git_diff_sha256": "b" * 64}
    versions = iter([clean, clean, changed])
    monkeypatch.setattr(provenance, "code_version", lambda: next(versions))  # the checkout at each start
    log, cpu = tmp_path / "starts.jsonl", torch.device("cpu")
    assert provenance.record_start(log, cpu, 1) is None  # the first start
    assert provenance.record_start(log, cpu, 1) is None  # the same code again
    assert provenance.record_start(log, cpu, 1) == (
        f"{tmp_path} was last started with s4al 0.1.0, git aaaaaaa; this start runs s4al 0.1.0, git aaaaaaa, "
        "modified (diff bbbbbbbb): what it trains and asks from now on comes from other code")
    assert len(log.read_text().splitlines()) == 3


def test_a_start_after_a_line_cut_short_by_a_kill_is_kept_on_its_own_line(tmp_path):
    log = tmp_path / "starts.jsonl"
    log.write_text('{"started": "2026-12-06T00:00:00+00:00", "command": ["s4al", "run"]}\n{"started": "2026-1')
    provenance.record_start(log, torch.device("cpu"), 1)
    lines = log.read_text().splitlines()
    assert lines[1] == '{"started": "2026-1' and json.loads(lines[2])["processes"] == 1 and len(lines) == 3


def test_a_start_whose_code_git_cannot_tell_says_nothing_of_a_change(tmp_path, monkeypatch):
    versions = iter([{"s4al": "0.1.0", "git_commit": "a" * 40, "git_dirty": False, "git_diff_sha256": None},
                     {"s4al": "0.1.0"}])  # git refused this checkout ("dubious ownership"), or is not installed
    monkeypatch.setattr(provenance, "code_version", lambda: next(versions))
    log, cpu = tmp_path / "starts.jsonl", torch.device("cpu")
    assert provenance.record_start(log, cpu, 1) is None and provenance.record_start(log, cpu, 1) is None
