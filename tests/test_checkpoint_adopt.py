"""Another run's final checkpoint of a cycle adopted as a run's own (adopt_final_checkpoint, `s4al run
--cycle0-from`), and the metrics log that adoption and the trainer write alike."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import ssl_data, tiny_config
from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import Ledger
from s4al.cli import app
from s4al.config import save_config
from s4al.run_folder import RunFolder
from s4al.train.checkpoint import (
    AdoptionRefused, adopt_final_checkpoint, load_checkpoint, save_checkpoint, write_metrics_log,
)
from s4al.train.trainer import Trainer
from test_cycle import cycle_config

METRIC_ONLY = {"active.metric"}


@pytest.fixture(scope="module")
def lender(tmp_path_factory) -> Path:
    """A run folder whose cycle 0 trained to its end: 2 epochs x 2 steps, evaluated after each epoch."""
    run_dir = tmp_path_factory.mktemp("lender")
    cfg = tiny_config()
    Trainer(cfg, *ssl_data(cfg), run_dir).fit()
    return run_dir


def lent_state(lender: Path) -> dict:
    return load_checkpoint(RunFolder(lender).checkpoint_path(0))


def test_the_metrics_log_replaces_its_cycles_lines_and_keeps_the_other_cycles(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"cycle": 0, "step": 2}\n{"cycle": 1, "step": 4}\n{"cycle": 0, "step": 4}\n')
    write_metrics_log(path, 0, [{"cycle": 0, "step": 9}])
    assert path.read_text() == '{"cycle": 1, "step": 4}\n{"cycle": 0, "step": 9}\n'
    write_metrics_log(tmp_path / "new.jsonl", 2, [{"cycle": 2, "step": 1}, {"cycle": 2, "step": 3}])
    assert (tmp_path / "new.jsonl").read_text() == '{"cycle": 2, "step": 1}\n{"cycle": 2, "step": 3}\n'


def test_a_damaged_metrics_log_line_is_kept_as_it_is_and_the_cycles_lines_still_replaced(tmp_path):
    """A line cut off (the file truncated) or edited into another JSON value: the resumed cycle's
    checkpoint still rewrites the log, which readers that skip such lines (s4al status) keep reading."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"cycle": 0, "step": 2}\n[1, 2]\n{"cycle": 1, "st\n')
    write_metrics_log(path, 0, [{"cycle": 0, "step": 9}])
    assert path.read_text() == '[1, 2]\n{"cycle": 1, "st\n{"cycle": 0, "step": 9}\n'


def test_an_adopted_checkpoint_holds_the_targets_config_and_resumes_training_nothing(lender, tmp_path):
    cfg = tiny_config(active={"metric": "margin"})
    target = RunFolder(tmp_path / "target")
    target.path.mkdir()
    target.metrics_log.write_text('{"cycle": 0, "step": 2, "miou": 0.5}\n')  # left by an adoption killed before
    adopt_final_checkpoint(lender, target.path, cfg, cycle=0, may_differ=METRIC_ONLY)

    source, own = lent_state(lender), load_checkpoint(target.checkpoint_path(0))
    assert source["config"]["active"]["metric"] == "entropy"
    assert own["config"] == cfg.model_dump(mode="json")
    assert own["step"] == own["total_steps"] == 4
    assert source["seconds"] > 0 and own["seconds"] == 0  # the lender trained it, not the target
    logged = target.metrics_log.read_text()
    assert logged == RunFolder(lender).metrics_log.read_text()  # the lender's evaluations, each once
    assert [json.loads(line)["step"] for line in logged.splitlines()] == [2, 4]

    events = []
    result = Trainer(cfg, *ssl_data(cfg), target.path, progress=events.append).fit()
    assert events == []  # no step trained, nothing evaluated
    assert result.history == source["history"] and result.seconds < source["seconds"]
    for name, tensor in source["teacher"].items():
        assert torch.equal(result.teacher.state_dict()[name], tensor), name
    assert target.metrics_log.read_text() == logged


def test_a_checkpoint_that_is_not_the_cycles_last_step_is_refused(lender, tmp_path):
    unfinished = RunFolder(tmp_path / "unfinished")
    save_checkpoint(lent_state(lender) | {"step": 2}, unfinished.checkpoint_path(0))  # as saved after epoch 1
    target = RunFolder(tmp_path / "target")
    with pytest.raises(AdoptionRefused) as refused:
        adopt_final_checkpoint(unfinished.path, target.path, tiny_config(), cycle=0)
    assert str(refused.value) == (f"{unfinished.checkpoint_path(0)}: at step 2 of 4 of cycle 0, "
                                  "not the final checkpoint of cycle 0")
    assert not target.path.exists()


@pytest.mark.parametrize(("overrides", "may_differ", "differing"), [
    ({"train": {"lr": 0.005}}, METRIC_ONLY, "train.lr (0.01 there, 0.005 here)"),  # the training reads it
    ({"active": {"metric": "margin"}, "ssl": {"enabled": False}}, METRIC_ONLY, "ssl.enabled (True there, False here)"),
    ({"active": {"metric": "margin"}}, (), "active.metric ('entropy' there, 'margin' here)"),  # by default: all equal
])
def test_a_checkpoint_trained_with_a_config_that_differs_outside_the_allowed_keys_is_refused(
        lender, tmp_path, overrides, may_differ, differing):
    target = RunFolder(tmp_path / "target")
    with pytest.raises(AdoptionRefused) as refused:
        adopt_final_checkpoint(lender, target.path, tiny_config(**overrides), cycle=0, may_differ=may_differ)
    assert str(refused.value) == f"{RunFolder(lender).checkpoint_path(0)}: trained with another {differing}"
    assert not target.path.exists()


def test_a_target_that_has_a_checkpoint_of_the_cycle_keeps_it(lender, tmp_path):
    target = RunFolder(tmp_path / "target")
    adopt_final_checkpoint(lender, target.path, tiny_config(), cycle=0)
    kept, log = target.checkpoint_path(0).read_bytes(), target.metrics_log.read_text()
    with pytest.raises(AdoptionRefused, match=f"^{target.checkpoint_path(0)}: exists"):
        adopt_final_checkpoint(lender, target.path, tiny_config(), cycle=0)
    assert target.checkpoint_path(0).read_bytes() == kept and target.metrics_log.read_text() == log


# ---- s4al run --cycle0-from ---------------------------------------------------------------------
def cli_run(*args: str):
    return CliRunner().invoke(app, ["run", *args, "--quiet"])


@pytest.fixture(scope="module")
def entropy_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-cycle run (entropy regions) and the config file it was made with."""
    root = tmp_path_factory.mktemp("entropy")
    config = root / "config.yaml"
    save_config(cycle_config(active={"cycles": 1}), config)
    result = cli_run("--out", str(root / "run"), "--config", str(config))
    assert result.exit_code == 0, result.output
    return root / "run", config


def test_a_new_run_takes_another_runs_cycle_0_and_asks_with_its_own_metric(entropy_run, tmp_path, monkeypatch):
    lender, config = entropy_run
    command = ("--out", str(tmp_path / "margin"), "--config", str(config), "--set", "active.metric=margin",
               "--cycle0-from", str(lender))
    result = cli_run(*command)
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # torchrun starting the same command line again
    again = cli_run(*command)
    assert again.exit_code == 0 and "cycle 0 taken" not in again.output, again.output
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert f"cycle 0 taken from {lender}: its final checkpoint, the same training" in " ".join(result.output.split())
    own, lent = (load_checkpoint(RunFolder(run).checkpoint_path(0)) for run in (tmp_path / "margin", lender))
    assert all(torch.equal(own["teacher"][k], lent["teacher"][k]) for k in lent["teacher"])
    summaries = [json.loads(RunFolder(run).cycle_summary_path(0).read_text()) for run in (tmp_path / "margin", lender)]
    assert summaries[0]["val"] == summaries[1]["val"]
    assert summaries[0]["train_seconds"] < summaries[1]["train_seconds"]  # it trained nothing (its cycle 1 did)
    with Ledger(RunFolder(tmp_path / "margin").ledger_path, readonly=True) as ledger:
        assert {region.metric for region in ledger.regions()} == {"margin"}


def test_a_run_with_more_cycles_takes_the_cycle_0_but_one_whose_cycle_0_is_its_last_does_not(entropy_run, tmp_path):
    lender, config = entropy_run  # 1 cycle after cycle 0: its cycle 0 trained the epochs of a cycle that is not the last
    longer = cli_run("--out", str(tmp_path / "longer"), "--config", str(config), "--set", "active.cycles=2",
                     "--cycle0-from", str(lender))
    assert longer.exit_code == 0, longer.output
    assert "cycle 0 taken from" in " ".join(longer.output.split())
    only = cli_run("--out", str(tmp_path / "only"), "--config", str(config), "--set", "active.cycles=0",
                   "--cycle0-from", str(lender))
    assert only.exit_code == 1 and "trained with another active.cycles (1 there, 0 here)" in " ".join(only.output.split())


def test_a_cycle_0_trained_otherwise_is_refused_before_the_run_is_made(entropy_run, tmp_path):
    lender, config = entropy_run
    result = cli_run("--out", str(tmp_path / "new"), "--config", str(config), "--set", "train.lr=0.02",
                     "--cycle0-from", str(lender))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"{RunFolder(lender).checkpoint_path(0)}: trained with another train.lr (0.01 there, 0.02 here); a run "
            f"made with --config {RunFolder(lender).config_path}, with --set of only what the acquisition reads, "
            "takes it" in " ".join(result.output.split()))
    assert not (tmp_path / "new").exists()
    resumed = cli_run("--resume", str(lender), "--cycle0-from", str(lender))
    assert resumed.exit_code == 1 and (f"{RunFolder(lender).checkpoint_path(0)}: the run has a cycle 0 of its own"
                                       in " ".join(resumed.output.split()))


def test_a_lender_that_is_no_active_learning_run_or_ran_on_other_processes_is_refused(entropy_run, lender,
                                                                                      tmp_path):
    _, config = entropy_run
    training = cli_run("--out", str(tmp_path / "new"), "--config", str(config), "--cycle0-from", str(lender))
    assert training.exit_code == 1 and f"{lender}: not a run of `s4al run`" in " ".join(training.output.split())
    two = tmp_path / "two_processes"
    shutil.copytree(entropy_run[0], two)
    path = RunFolder(two).checkpoint_path(0)
    save_checkpoint(load_checkpoint(path) | {"processes": 2}, path)
    refused = cli_run("--out", str(tmp_path / "new"), "--config", str(config), "--cycle0-from", str(two))
    assert refused.exit_code == 1 and (f"{path}: trained by 2 processes, each with its own train.batch_size; this "
                                       "run has 1: start it under torchrun with 2 processes in all"
                                       in " ".join(refused.output.split()))
    assert not (tmp_path / "new").exists()


def test_a_run_killed_before_its_cycle_0_trained_takes_one_on_resume(entropy_run, tmp_path):
    lender, config = entropy_run
    ActiveLearningRun(tmp_path / "run", cycle_config(active={"cycles": 1})).close()  # made, then killed
    result = cli_run("--resume", str(tmp_path / "run"), "--cycle0-from", str(lender))
    assert result.exit_code == 0, result.output
    assert f"cycle 0 taken from {lender}" in " ".join(result.output.split())
