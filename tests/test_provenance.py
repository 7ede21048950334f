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
from test_cycle import cycle_config


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git repository holding one committed file, standing for s4al's own checkout."""
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path)
    return tmp_path


def test_outside_its_own_git_checkout_the_code_is_named_by_its_version_alone(tmp_path, monkeypatch, checkout):
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path.parent)
    assert provenance.code_version() == {"s4al": s4al.__version__}
    site_packages = checkout / ".venv" / "lib" / "site-packages"  # installed in a venv inside a checkout
    site_packages.mkdir(parents=True)
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", site_packages)
    assert provenance.code_version() == {"s4al": s4al.__version__}


def test_the_code_is_named_by_its_commit_and_each_change_to_it_by_its_own_digest(checkout):
    clean = provenance.code_version()
    assert clean == {"s4al": s4al.__version__, "git_commit": git(checkout, "rev-parse", "HEAD"), "git_dirty": False,
                     "git_diff_sha256": None}
    digests = []
    for text in ("x = 2\n", "x = 3\n", "x = 2\n"):
        (checkout / "code.py").write_text(text)
        changed = provenance.code_version()
        assert changed["git_commit"] == clean["git_commit"] and changed["git_dirty"] is True
        digests.append(changed["git_diff_sha256"])
    assert digests[0] != digests[1] and digests[0] == digests[2]  # the same change, the same digest
    (checkout / "code.py").write_text("x = 1\n")
    assert provenance.code_version() == clean
    (checkout / "notes.txt").write_text("not code")
    (checkout / "scratch.py").write_text("outside the package")
    assert provenance.code_version() == clean
    (checkout / "s4al" / "active").mkdir(parents=True)
    (checkout / "s4al" / "active" / "new_score.py").write_text("y = 1\n")  # a module not yet added
    added = provenance.code_version()
    (checkout / "s4al" / "active" / "new_score.py").write_text("y = 2\n")
    assert added["git_dirty"] and provenance.code_version()["git_diff_sha256"] != added["git_diff_sha256"]


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
    assert {start["git_commit"] for start in starts} == {git(provenance.PACKAGE_ROOT, "rev-parse", "HEAD")}
    page = write_report(run_dir).read_text()
    assert f"s4al run --resume {run_dir} --quiet" in page and f"s4al run --out {run_dir}" in page


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
