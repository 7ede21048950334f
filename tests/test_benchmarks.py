"""The benchmark scripts at smoke size, through their command-line entry points (in this process,
to pay torch's import once, except where --time-limit starts its own processes):
label_efficiency.py (a time-limited window of runs side by side, skip-if-exists, resume, a
variant, the test split, one cycle 0 for runs that differ only in acquisition), summarize.py (tables, paired differences, the README's table),
window.py (the scheduler, on plain processes), speed.py --smoke and jpeg_camvid.py."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s4al.active.cycle import ActiveLearningRun
from s4al.config import load_config
from s4al.data.camvid import CamVid
from s4al.run_folder import RunFolder
from s4al.train.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import annotation_scale  # noqa: E402
import first_run  # noqa: E402
import jpeg_camvid  # noqa: E402
import label_efficiency  # noqa: E402
import speed  # noqa: E402
import summarize  # noqa: E402
from common import SMOKE_OVERRIDES, camvid_paths, cpu_model, merged  # noqa: E402
from window import STARTED_AT, Job, run_window, stop_grace  # noqa: E402

MACHINE_KEYS = {"cpu", "cpu_count", "gpu", "torch", "smp", "git_commit", "date"}
BUILT_IN_METHODS = (  # label_efficiency.METHODS as shipped; a user's own methods may come beside them
    "full_supervised", "full_supervised_scratch", "sup_10", "ssl_10", "ssl_10_paper", "image_random", "image_entropy",
    "image_coreset", "region_random_ssl", "region_entropy_nossl", "s4al", "s4al_no_cw", "s4al_no_bcm", "s4al_paper",
    "s4al_margin", "s4al_least_confidence", "image_entropy_ssl", "s4al_30x30x2", "s4al_60x60x1")


def run_script(module, *args) -> None:
    assert module.main([str(a) for a in args]) == 0


def run_smoke_protocol(root: Path, *window: str) -> None:
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "full_supervised", "sup_10",
               "--results", root / "results", "--work", root / "work", *window)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    """Both runs side by side as their own processes, within a window they need a fraction of."""
    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:  # two processes on a few cores: a thread each, not a waiting crowd
        patch.setenv("OMP_NUM_THREADS", "1")
        run_smoke_protocol(root, "--time-limit", "240", "--parallel", "2")
    return root


def test_a_window_runs_each_method_and_seed_as_a_process_with_its_log_and_cost(bench_root):
    results = bench_root / "results" / "smoke"
    assert sorted(p.name for p in results.glob("*.json")) == ["full_supervised_seed0.json", "sup_10_seed0.json"]
    result = json.loads((results / "sup_10_seed0.json").read_text())
    assert (result["protocol"], result["method"], result["seed"]) == ("smoke", "sup_10", 0)
    assert {"final", "cycles", "timings", "config", "machine", "run_dir", "method_overrides", "region"} <= set(result)
    assert MACHINE_KEYS <= set(result["machine"])
    assert result["region"] == {"size": 4, "per_image": 4}  # 30x30 at 360x480 is 4x4 at 48x64
    [cycle] = result["cycles"]
    assert cycle["labelled_fraction"] == pytest.approx(0.1)
    assert set(cycle["val"]["iou"]) == set(result["final"]["iou"]) and 0 <= cycle["val"]["miou"] <= 1
    assert result["timings"]["resumed"] is False and result["timings"]["steps"]["0"]["steps"] == 8
    assert result["cost"]["side_by_side"] == 2 and result["cost"]["invocations"] == 1
    assert result["cost"]["device"] == result["machine"]["cpu"]  # the smoke protocol trains on the CPU
    # its process's whole time: the interpreter, torch and the configs too (the window told it when it began)
    assert result["timings"]["wall_seconds"] < result["cost"]["wall_seconds"] < result["timings"]["wall_seconds"] + 60
    full = json.loads((results / "full_supervised_seed0.json").read_text())
    assert full["final"]["labelled_fraction"] == 1.0 and full["config"]["ssl"]["enabled"] is False
    log = (bench_root / "work" / "smoke" / "logs" / "sup_10_seed0.log").read_text()
    assert "--methods sup_10 --seeds 0" in log and "final mIoU" in log


def test_rerunning_a_window_skips_what_exists_and_starts_nothing(bench_root, capsys):
    log = bench_root / "work" / "smoke" / "logs" / "sup_10_seed0.log"
    before = log.read_text()
    started = time.monotonic()
    run_smoke_protocol(bench_root, "--time-limit", "240", "--parallel", "2")
    assert time.monotonic() - started < 5  # no process started
    out = capsys.readouterr().out
    assert "full_supervised seed 0] skipped" in out and "sup_10 seed 0] skipped" in out
    assert log.read_text() == before


def test_results_made_before_with_the_same_configuration_are_done_elsewhere_too(bench_root, tmp_path, capsys):
    made = bench_root / "results" / "smoke" / "sup_10_seed0.json"
    cfg = label_efficiency.method_config(label_efficiency.PROTOCOLS["smoke"], label_efficiency.METHODS["sup_10"], 0,
                                         Path("elsewhere"), Path("weights.pth"), {})
    assert label_efficiency.made_with(made, cfg)  # its data and weights were elsewhere: the same run
    for key, value in (("train", {"lr": 0.02}), ("ssl", {"mask_unconfident": True})):  # another run; an old option
        result = json.loads(made.read_text())
        result["config"][key] |= value
        changed = tmp_path / key / made.name
        changed.parent.mkdir()
        changed.write_text(json.dumps(result))
        assert not label_efficiency.made_with(changed, cfg)
    result = json.loads(made.read_text())
    result["config"]["model"]["channels_last"] = True  # an option gone, at the value s4al now works with
    (tmp_path / "old.json").write_text(json.dumps(result))
    assert label_efficiency.made_with(tmp_path / "old.json", cfg)
    assert not label_efficiency.made_with(tmp_path / "none.json", cfg)
    started = time.monotonic()
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "full_supervised", "sup_10", "--results",
               tmp_path / "new", "--work", tmp_path / "work", "--done", bench_root / "results", "--time-limit", "60")
    assert time.monotonic() - started < 5 and "sup_10 seed 0] skipped: " in capsys.readouterr().out
    assert not (tmp_path / "new").exists()


def test_an_existing_result_of_another_configuration_is_refused_before_anything_runs(bench_root, tmp_path, capsys):
    """A result stands for its (method, seed) only if it was made with the configuration asked now:
    one of other settings (a --set under a --name used before) is named, never skipped silently;
    one differing in keys that change nothing it computed (inert ones, where it checkpointed) stands."""
    results = tmp_path / "results"
    shutil.copytree(bench_root / "results", results)
    made = results / "smoke" / "sup_10_seed0.json"
    result = json.loads(made.read_text())
    result["config"]["ssl"]["replay_size"] = 2  # inert: the supervised learner reads no ssl key but two
    result["config"]["train"]["checkpoint_every"] = 3
    result["config"]["train"]["fast"] = "off"  # auto on a CPU: the loader path either way
    made.write_text(json.dumps(result))
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "sup_10", "--results", results,
               "--work", bench_root / "work")
    assert "sup_10 seed 0] skipped: " in capsys.readouterr().out
    result["config"]["train"]["lr"] = 0.5
    result["config"]["train"]["fast"] = "on"
    made.write_text(json.dumps(result))
    before = made.read_bytes()
    started = time.monotonic()
    status = label_efficiency.main(["--protocol", "smoke", "--methods", "full_supervised", "sup_10", "--results",
                                    str(results), "--work", str(tmp_path / "work")])
    assert status == 2 and time.monotonic() - started < 5 and made.read_bytes() == before
    err = capsys.readouterr().err
    assert (f"error: {made} holds a run of another configuration (differing in train.fast, train.lr): to run it again, "
            f"delete it and its run folder {tmp_path / 'work' / 'smoke' / 'sup_10_seed0'}; or give these runs "
            "another --name") in err
    assert not (tmp_path / "work").exists()
    made.unlink()  # its run folder, made with another configuration, is refused too, not left to fail as it opens
    run_dir = shutil.copytree(bench_root / "work" / "smoke" / "sup_10_seed0", tmp_path / "work" / "smoke" / "sup_10_seed0")
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.01", "lr: 0.5"))
    status = label_efficiency.main(["--protocol", "smoke", "--methods", "sup_10", "--results", str(results),
                                    "--work", str(tmp_path / "work")])
    assert status == 2 and not made.exists()
    assert (f"error: {run_dir} was made with another configuration (differing in train.lr): to run it again, delete it; "
            "or give these runs another --name") in capsys.readouterr().err


def test_a_skipped_result_made_with_other_code_says_which(bench_root, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(bench_root / "results", results)
    made = results / "smoke" / "sup_10_seed0.json"
    result = json.loads(made.read_text())
    now = label_efficiency.code_version(label_efficiency.REPO, ("s4al", "benchmarks"))
    if "git_commit" not in now:
        pytest.skip("git cannot read this checkout: no code to tell apart")
    result["machine"] |= {"git_commit": "0" * 40, "git_dirty": True, "git_diff_sha256": "1" * 64}
    made.write_text(json.dumps(result))
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "sup_10", "--results", results,
               "--work", bench_root / "work")
    line = next(line for line in capsys.readouterr().out.splitlines() if "sup_10 seed 0] skipped" in line)
    assert f"(made with s4al {result['machine']['s4al']}, git 0000000, modified (diff 11111111); this checkout is " \
           f"s4al {now['s4al']}, git {now['git_commit'][:7]}" in line


def test_a_window_that_stops_runs_says_so_in_its_exit_status_and_names_each_run_once(tmp_path):
    args = label_efficiency.parse_args(["--protocol", "smoke", "--methods", "sup_10", "sup_10", "--seeds", "0", "0"])
    assert (args.methods, args.seeds) == (["sup_10"], [0])
    window = ["--time-limit", "60"]
    for gpus in (["--gpus", "0", "1"], ["--gpus", "0", "0", *window], ["--gpus", "0,1", *window], ["--gpus", "0 1", *window]):
        with pytest.raises(SystemExit):
            label_efficiency.parse_args(["--protocol", "smoke", *gpus])
    status = label_efficiency.main(["--protocol", "smoke", "--methods", "sup_10", "--results", str(tmp_path / "r"),
                                    "--work", str(tmp_path / "w"), "--time-limit", "4"])
    assert status == 3 and not (tmp_path / "r").exists()  # stopped at the limit: no result, not a failure (1)


def test_a_window_expects_a_run_to_take_what_the_method_took_with_other_seeds_alike(bench_root, tmp_path):
    made = json.loads((bench_root / "results" / "smoke" / "sup_10_seed0.json").read_text())
    took = made["cost"]["wall_seconds"]

    def expected(*flags, seed=1, overrides=None):
        args = label_efficiency.parse_args(["--protocol", "smoke", "--results", str(bench_root / "results"), "--work",
                                            str(tmp_path / "work"), "--time-limit", "60", *flags])
        cfg = label_efficiency.method_config(label_efficiency.PROTOCOLS["smoke"], label_efficiency.METHODS["sup_10"],
                                             seed, Path("elsewhere"), Path("weights.pth"), overrides or {})
        return label_efficiency.expected_seconds(args, "smoke", "sup_10", seed, cfg)

    assert expected("--parallel", "2") == pytest.approx(took)  # seed 0 ran 2 side by side
    assert expected("--parallel", "1") is None  # alone, it would take another time
    assert expected("--parallel", "2", overrides={"train": {"lr": 0.02}}) is None  # another configuration
    done = tmp_path / "done" / "smoke"
    done.mkdir(parents=True)
    lent = {**made["cost"], "wall_seconds": 2 * took, "cycle0_lender_train_seconds": took}  # a lender's cycle 0 counts
    (done / "sup_10_seed2.json").write_text(json.dumps({**made, "seed": 2, "cost": lent}))
    (done / "sup_10_seed3.json").write_text("{damaged")
    assert expected("--parallel", "2", "--done", str(tmp_path / "done")) == pytest.approx(2 * took)  # the median
    begun = label_efficiency.bench_run_dir(tmp_path / "work", "smoke", "sup_10", 1)
    begun.mkdir(parents=True)
    RunFolder(begun).save_config(
        label_efficiency.method_config(label_efficiency.PROTOCOLS["smoke"], label_efficiency.METHODS["sup_10"], 1,
                                       Path("elsewhere"), Path("weights.pth")))
    assert expected("--parallel", "2") is None  # begun: part of it is done


def test_a_window_leaves_a_run_that_would_not_finish_in_the_time_left_to_a_rerun(bench_root, tmp_path, capsys):
    made = json.loads((bench_root / "results" / "smoke" / "sup_10_seed0.json").read_text())
    done = tmp_path / "done" / "smoke"
    done.mkdir(parents=True)
    # all of a 60 s window but its 3 s of grace: it no longer fits once the window has begun
    (done / "sup_10_seed0.json").write_text(json.dumps({**made, "cost": {**made["cost"], "wall_seconds": 57.0}}))
    started = time.monotonic()
    status = label_efficiency.main(["--protocol", "smoke", "--methods", "sup_10", "--seeds", "1", "--results",
                                    str(tmp_path / "r"), "--work", str(tmp_path / "w"), "--done", str(tmp_path / "done"),
                                    "--time-limit", "60", "--parallel", "2"])
    assert status == 3 and time.monotonic() - started < 10  # nothing ran, and nothing was waited for
    out = capsys.readouterr().out
    assert "sup_10 seed 1 not started: expected to take 57 s, 57 s left" in out
    assert "not started, too little time left for them (rerun with more): sup_10 seed 1" in out
    assert not (tmp_path / "w" / "smoke" / "sup_10_seed1").exists()


def test_a_runs_cost_counts_its_start_up_where_a_window_started_it(monkeypatch):
    monkeypatch.delenv(STARTED_AT, raising=False)
    assert label_efficiency.invocation_seconds(time.perf_counter() - 5) == pytest.approx(5, abs=1)
    monkeypatch.setenv(STARTED_AT, repr(time.time() - 100))  # the interpreter, torch and the configs took 95 s
    assert label_efficiency.invocation_seconds(time.perf_counter() - 5) == pytest.approx(100, abs=1)


def test_the_device_of_a_cost_is_the_gpu_nvidia_smi_names_else_the_cpu(tmp_path, monkeypatch):
    """Named without initialising CUDA in the window's process, which goes on starting processes."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert label_efficiency.device_name("auto") == label_efficiency.device_name("cpu") == cpu_model()
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/asked\necho 'NVIDIA H200'\n")
    smi.chmod(0o755)
    assert label_efficiency.device_name("cuda:1") == "NVIDIA H200"
    assert (tmp_path / "asked").read_text().split() == ["--query-gpu=name", "--format=csv,noheader", "-i", "1"]
    assert label_efficiency.device_name("cpu") == cpu_model()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # cuda:1 is the machine's GPU 7, which nvidia-smi names
    label_efficiency.device_name("cuda:1")
    assert (tmp_path / "asked").read_text().split()[-1] == "7"
    label_efficiency.device_name("cuda", visible="3")
    assert (tmp_path / "asked").read_text().split()[-1] == "3"


def test_a_set_variant_goes_to_its_own_folder_with_its_overrides(bench_root):
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "sup_10", "--set", "train.epochs=1",
               "--name", "smoke_short", "--results", bench_root / "results", "--work", bench_root / "work")
    result = json.loads((bench_root / "results" / "smoke_short" / "sup_10_seed0.json").read_text())
    assert result["protocol"] == "smoke_short" and result["extra_overrides"] == {"train": {"epochs": 1}}
    assert result["config"]["train"]["epochs"] == 1 and result["cost"]["side_by_side"] == 1
    assert result["timings"]["steps"]["0"]["steps"] < 8  # fewer than the protocol's own sup_10
    for argv in (["--set", "train.epochs=1"], ["--set", "train.epochs=1", "--name", "short"], ["--parallel", "2"]):
        with pytest.raises(SystemExit):  # no --name; a name that hides its protocol; --parallel without a window
            label_efficiency.parse_args(["--protocol", "smoke", *argv])


@pytest.mark.parametrize("argv, problem", [
    (["--time-limit", "-1"], "--time-limit -1: give the seconds the runs may take, a positive number"),
    (["--time-limit", "nan"], "--time-limit nan: give the seconds"),
    (["--seeds", "-1"], "--seeds: a seed is a number >= 0, got -1"),
    (["--set", "train", "--name", "smoke_x"], "--set: override 'train' must look like section.key=value"),
])
def test_arguments_that_would_run_nothing_or_fail_later_are_refused_at_once(tmp_path, capsys, argv, problem):
    with pytest.raises(SystemExit) as refused:
        label_efficiency.parse_args(["--protocol", "smoke", "--work", str(tmp_path), *argv])
    assert refused.value.code == 2 and problem in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_an_unknown_config_key_is_refused_before_any_run_starts(tmp_path, capsys):
    status = label_efficiency.main(["--protocol", "smoke", "--methods", "sup_10", "--set", "train.nosuch=1", "--name",
                                    "smoke_x", "--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")])
    assert status == 2 and "train.nosuch: unknown key" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_summarize_names_a_missing_folder_a_missing_readme_and_a_file_that_is_no_result(tmp_path, capsys):
    with pytest.raises(SystemExit):
        summarize.main(["--results", str(tmp_path / "missing")])
    assert f"--results {tmp_path / 'missing'}: no such folder" in capsys.readouterr().err
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "sup_10_seed0.json").write_text('{"method": "sup_10", "se')
    with pytest.raises(SystemExit, match=r"sup_10_seed0.json: not a result file of label_efficiency.py \(JSONDecodeError"):
        summarize.main(["--results", str(tmp_path), "--protocol", "smoke"])
    with pytest.raises(SystemExit):
        summarize.main(["--results", str(tmp_path), "--docs", str(tmp_path / "doc.md"),
                        "--readme", str(tmp_path / "README.md")])
    assert f"--readme {tmp_path / 'README.md'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "doc.md").exists()


def test_a_summary_says_which_code_made_which_results_where_they_differ():
    def run(seed: int, machine: dict) -> dict:
        return {"seed": seed, "machine": machine}

    clean = {"s4al": "0.1.0", "git_commit": "a" * 40, "git_dirty": False}
    groups = {"sup_10": [run(0, clean), run(1, clean)], "s4al": [run(0, clean)]}
    assert summarize.code_note(groups) == ""  # one version: nothing to say
    groups["s4al"].append(run(1, clean | {"git_dirty": True, "git_diff_sha256": "b" * 64}))
    groups["ssl_10"] = [run(0, {"git_commit": "c" * 40, "git_dirty": True}), run(1, {"gpu": None})]  # older files
    assert summarize.code_note(groups) == (
        "Made by 3 versions of the code: s4al 0.1.0, git aaaaaaa (sup_10 seed 0, sup_10 seed 1, s4al seed 0); "
        "s4al 0.1.0, git aaaaaaa, modified (diff bbbbbbbb) (s4al seed 1); git ccccccc, modified (ssl_10 seed 0).\n\n")


def test_existing_results_are_skipped_and_missing_ones_resume_and_add_their_cost(bench_root, capsys):
    results = bench_root / "results" / "smoke"
    kept = (results / "full_supervised_seed0.json").read_bytes()
    first = json.loads((results / "sup_10_seed0.json").read_text())["cost"]
    (results / "sup_10_seed0.json").unlink()
    run_smoke_protocol(bench_root)
    assert "full_supervised seed 0] skipped" in capsys.readouterr().out
    assert (results / "full_supervised_seed0.json").read_bytes() == kept
    resumed = json.loads((results / "sup_10_seed0.json").read_text())
    assert resumed["timings"]["resumed"] is True and resumed["timings"]["steps"] == {}  # nothing left to train
    # the code of each start is kept: a result written again names the code that trained it
    assert len(resumed["starts"]) == 2 and all({"s4al", "torch", "command"} <= set(start) for start in resumed["starts"])
    assert resumed["cost"]["invocations"] == 2 and resumed["cost"]["wall_seconds"] > first["wall_seconds"]


def test_methods_run_the_products_learner_and_s4al_paper_the_papers_exactly():
    def learner(method: str):
        return label_efficiency.method_config(label_efficiency.PROTOCOLS["smoke"], label_efficiency.METHODS[method],
                                              0, Path("."), Path(".")).ssl

    assert learner("s4al") == load_config("demo", {"ssl": SMOKE_OVERRIDES["ssl"]}).ssl  # nothing pinned
    paper, default = learner("s4al_paper").model_dump(), learner("s4al").model_dump()
    assert {key for key in default if paper[key] != default[key]} == {
        "distribution_alignment", "class_normalised_confidence", "freeze_bn_on_unlabelled"}
    assert (paper["distribution_alignment"], paper["class_normalised_confidence"], paper["freeze_bn_on_unlabelled"]) == (
        "off", False, False)


def smoke_config(method: str, seed: int = 0, extra: dict | None = None):
    return label_efficiency.method_config(label_efficiency.PROTOCOLS["smoke"], label_efficiency.METHODS[method],
                                          seed, Path("."), Path("."), extra)


def test_only_configs_that_differ_in_what_the_acquisition_reads_share_cycle_0():
    differences = label_efficiency.cycle0_differences
    s4al = smoke_config("s4al")
    assert differences(s4al, smoke_config("region_random_ssl")) == []  # active.metric
    assert differences(s4al, smoke_config("s4al_60x60x1")) == []  # active.region_size, regions_per_image
    assert differences(s4al, smoke_config("image_entropy_ssl")) == []  # active.level
    assert differences(s4al, smoke_config("s4al_paper")) == [  # another learner
        "ssl.class_normalised_confidence", "ssl.distribution_alignment", "ssl.freeze_bn_on_unlabelled"]
    assert differences(s4al, smoke_config("s4al", seed=1)) == ["seed"]
    assert differences(s4al, smoke_config("region_entropy_nossl")) == ["ssl.enabled"]
    assert differences(s4al, smoke_config("ssl_10")) == ["active.cycles", "ssl.balanced_from_cycle"]
    configs = {m: smoke_config(m) for m in label_efficiency.METHODS}
    mates = label_efficiency.cycle0_mates(configs, "s4al")
    assert [m for m in mates if m in BUILT_IN_METHODS] == [  # a method added to METHODS may join them
        "region_random_ssl", "s4al_margin", "s4al_least_confidence", "image_entropy_ssl", "s4al_30x30x2", "s4al_60x60x1"]
    assert label_efficiency.cycle0_mates(configs, "s4al_paper") == []


# A different valid value for each key only the acquisition reads (selection 'global' needs a budget).
ACQUISITION_CHANGES = {
    "active.level": {"level": "image"},
    "active.metric": {"metric": "margin"},
    "active.metric_options": {"metric": "tempered_entropy", "metric_options": {"temperature": 2.0}},  # score_plugin
    "active.region_size": {"region_size": 2},
    "active.regions_per_image": {"regions_per_image": 1},
    "active.selection": {"selection": "global", "global_budget": 10},
    "active.global_budget": {"global_budget": 10},
    "active.score_batch_size": {"score_batch_size": 1},
}


def trained_cycle0(run_dir: Path, changes: dict) -> tuple:
    """(config, final cycle-0 checkpoint) of smoke s4al, seed 0, with `changes`; an external
    annotator stops the run at its first questions, after cycle 0 and its acquisition."""
    cfg = smoke_config("s4al", extra=merged({"active": {"annotator": "external"}}, changes))
    ActiveLearningRun(run_dir, cfg).run()
    return cfg, load_checkpoint(RunFolder(run_dir).checkpoint_path(0))


def test_every_key_only_the_acquisition_reads_leaves_cycle_0_bit_identical(tmp_path, score_plugin):
    assert set(ACQUISITION_CHANGES) == label_efficiency.ACQUISITION_ONLY  # a key added to the list is checked here
    base_cfg, base = trained_cycle0(tmp_path / "base", {})

    def differing_tensors(state: dict) -> list[str]:
        return [f"{network}.{name}" for network in ("student", "teacher")
                for name, tensor in base[network].items() if not torch.equal(tensor, state[network][name])]

    for key, change in ACQUISITION_CHANGES.items():
        cfg, state = trained_cycle0(tmp_path / key, {"active": change})
        assert label_efficiency.cycle0_differences(base_cfg, cfg) == [] and cfg != base_cfg
        assert differing_tensors(state) == [], key
        assert state["history"] == base["history"], key
    # a key cycle 0 reads makes runs unshareable, and this comparison sees what it changes
    cfg, state = trained_cycle0(tmp_path / "lr", {"train": {"lr": base_cfg.train.lr / 2}})
    assert label_efficiency.cycle0_differences(base_cfg, cfg) == ["train.lr"]
    assert differing_tensors(state) != []


@pytest.fixture(scope="module")
def lent_root(tmp_path_factory) -> Path:
    """s4al, then region_random_ssl (the same cycle 0, random regions), one after the other."""
    root = tmp_path_factory.mktemp("lent")
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "s4al", "region_random_ssl",
               "--results", root / "results", "--work", root / "work")
    return root


def smoke_result(root: Path, method: str) -> dict:
    return json.loads((root / "results" / "smoke" / f"{method}_seed0.json").read_text())


def test_smoke_results_go_to_the_work_folder_never_to_the_committed_ones(tmp_path):
    assert label_efficiency.parse_args(["--protocol", "smoke", "--work", str(tmp_path)]).results == tmp_path / "results"
    assert label_efficiency.parse_args(["--list"]).results == label_efficiency.RESULTS / "label_efficiency"


def test_a_run_resumes_the_same_cycle_0_of_another_and_names_it(lent_root):
    lender, borrower = smoke_result(lent_root, "s4al"), smoke_result(lent_root, "region_random_ssl")
    assert lender["cycle0_from"] is None and borrower["cycle0_from"] == "s4al_seed0"
    assert borrower["cycles"][0]["val"] == lender["cycles"][0]["val"]
    assert lender["timings"]["steps"]["0"]["steps"] == 4
    assert "0" not in borrower["timings"]["steps"] and borrower["timings"]["steps"]["1"]["steps"] == 8
    assert borrower["cost"]["cycle0_lender_train_seconds"] == lender["cycles"][0]["train_seconds"]
    assert "cycle0_lender_train_seconds" not in lender["cost"]
    # from the acquisition on they differ: random regions buy other pixels than entropy regions
    assert borrower["cycles"][0]["bought"]["regions"] == lender["cycles"][0]["bought"]["regions"] == 72
    assert borrower["cycles"][0]["bought"]["class_pixels"] != lender["cycles"][0]["bought"]["class_pixels"]
    folders = {m: RunFolder(lent_root / "work" / "smoke" / f"{m}_seed0") for m in ("s4al", "region_random_ssl")}
    lent, kept = (load_checkpoint(folders[m].checkpoint_path(0)) for m in ("region_random_ssl", "s4al"))
    assert all(lent["student"][k].equal(kept["student"][k]) for k in kept["student"])
    assert lent["config"]["active"]["metric"] == "random"  # the borrower's own config
    cycle0_lines = [[line for line in f.metrics_log.read_text().splitlines() if '"cycle": 0' in line]
                    for f in folders.values()]
    assert cycle0_lines[0] == cycle0_lines[1] and len(cycle0_lines[0]) == 1


def test_a_run_taking_cycle_0_from_a_borrower_names_the_run_that_trained_it_and_its_seconds(lent_root, tmp_path,
                                                                                              capsys):
    work = lent_root / "work" / "smoke"
    run = ActiveLearningRun(tmp_path / "margin", smoke_config("s4al_margin"))
    record = tmp_path / "margin.cycle0_from.json"
    label_efficiency.adopt_cycle0(run, {"region_random_ssl_seed0": work / "region_random_ssl_seed0"}, record, "[x]")
    assert capsys.readouterr().out == "[x] cycle 0 from region_random_ssl_seed0: its final checkpoint, the same training\n"
    assert json.loads(record.read_text()) == {"run": "s4al_seed0",
                                              "train_seconds": smoke_result(lent_root, "s4al")["cycles"][0]["train_seconds"]}


def test_without_sharing_a_run_trains_its_own_cycle_0_to_the_same_results(lent_root, tmp_path):
    work = tmp_path / "work" / "smoke"
    shutil.copytree(lent_root / "work" / "smoke" / "s4al_seed0", work / "s4al_seed0")  # a lender at hand
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "region_random_ssl", "--no-share-cycle0",
               "--results", tmp_path / "results", "--work", tmp_path / "work")
    own, borrowed = smoke_result(tmp_path, "region_random_ssl"), smoke_result(lent_root, "region_random_ssl")
    assert own["cycle0_from"] is None and own["timings"]["steps"]["0"]["steps"] == 4
    assert "cycle0_lender_train_seconds" not in own["cost"]
    assert own["cycles"][0]["val"] == borrowed["cycles"][0]["val"]  # on a CPU training repeats exactly
    assert own["final"] == borrowed["final"]


def test_a_lender_trained_with_another_learner_or_unfinished_is_refused(lent_root, tmp_path, capsys):
    work = lent_root / "work" / "smoke"
    unfinished = tmp_path / "unfinished"
    shutil.copytree(work / "s4al_seed0", unfinished)
    RunFolder(unfinished).cycle_summary_path(0).unlink()
    run = ActiveLearningRun(tmp_path / "paper", smoke_config("s4al_paper"))
    record = tmp_path / "paper.cycle0_from.json"
    label_efficiency.adopt_cycle0(run, {"unfinished": unfinished, "s4al_seed0": work / "s4al_seed0"}, record, "[x]")
    assert not run.folder.checkpoint_path(0).exists() and not record.exists()
    lender = RunFolder(work / "s4al_seed0").checkpoint_path(0)
    assert capsys.readouterr().out == (f"[x] cycle 0 not taken from s4al_seed0: {lender}: trained with another "
                                       "ssl.class_normalised_confidence (True there, False here), "
                                       "ssl.distribution_alignment ('argmax' there, 'off' here), "
                                       "ssl.freeze_bn_on_unlabelled (True there, False here)\n")


def test_a_lender_with_other_initial_labels_or_pool_is_refused(lent_root, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(lent_root / "work" / "smoke" / "s4al_seed0", other)
    pool = RunFolder(other).splits_dir / "pool.txt"
    pool.write_text("".join(pool.read_text().splitlines(keepends=True)[:-1]))  # one pool image fewer
    run = ActiveLearningRun(tmp_path / "random", smoke_config("region_random_ssl"))
    record = tmp_path / "random.cycle0_from.json"
    label_efficiency.adopt_cycle0(run, {"other": other}, record, "[x]")
    assert not run.folder.checkpoint_path(0).exists() and not record.exists()
    assert capsys.readouterr().out == (f"[x] cycle 0 not taken from other: {other / 'splits'}: other initial labelled "
                                       f"images or another pool than {tmp_path / 'random' / 'splits'}\n")


def test_a_window_starts_a_run_after_its_mate_and_prefers_it_once_the_mates_cycle_0_is_done(lent_root, tmp_path):
    def jobs(*flags):
        args = label_efficiency.parse_args(["--protocol", "smoke", "--work", str(tmp_path), "--time-limit", "60", *flags])
        mates = {} if args.no_share_cycle0 else label_efficiency.all_cycle0_mates(
            label_efficiency.PROTOCOLS["smoke"], (0,), args, {})
        todo = [(method, 0, label_efficiency.method_config(label_efficiency.PROTOCOLS["smoke"],
                                                           label_efficiency.METHODS[method], 0, Path("x"), Path("w")))
                for method in ("s4al", "region_random_ssl", "sup_10")]
        return {job.label: job for job in label_efficiency.window_jobs(args, "smoke", todo, mates)}

    shared = jobs()
    assert shared["s4al seed 0"].ready is None and shared["sup_10 seed 0"].ready is None
    assert shared["region_random_ssl seed 0"].ready() is False  # s4al's cycle 0 is not done
    shutil.copytree(lent_root / "work" / "smoke" / "s4al_seed0", tmp_path / "smoke" / "s4al_seed0")
    assert shared["region_random_ssl seed 0"].ready() is True
    unshared = jobs("--no-share-cycle0")
    assert all(job.ready is None and "--no-share-cycle0" in job.argv for job in unshared.values())


def test_summarize_writes_tables_plot_results_doc_and_the_readme_block(bench_root, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(bench_root / "results" / "smoke", results / "smoke")
    variant = json.loads((results / "smoke" / "sup_10_seed0.json").read_text())
    variant.update(protocol="smoke_short", extra_overrides={"train": {"epochs": 1}})
    variant["config"]["train"]["epochs"] = 1
    (results / "smoke_short").mkdir()
    (results / "smoke_short" / "sup_10_seed0.json").write_text(json.dumps(variant))
    # a run whose setting was a default then, another now: its command sets it as it ran
    variant["config"]["train"]["lr"] = 0.02
    variant.update(protocol="smoke_then", extra_overrides={})
    (results / "smoke_then").mkdir()
    (results / "smoke_then" / "sup_10_seed0.json").write_text(json.dumps(variant))
    run_script(summarize, "--protocol", "smoke", "--results", results)
    summary = (results / "smoke" / "summary.md").read_text()
    assert "| full_supervised | 0 | 100.00 |" in summary and "| sup_10 | 0 | 10.00 |" in summary
    assert "`benchmarks/label_efficiency.py --protocol smoke --methods sup_10 --seeds 0`" in summary
    assert (results / "smoke" / "summary.png").stat().st_size > 0
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:glance -->\nold\n<!-- /results:glance -->\nrest\n")
    run_script(summarize, "--results", results, "--docs", tmp_path / "results.md", "--readme", readme)
    doc = (tmp_path / "results.md").read_text()
    assert "## `smoke`" in doc and "## `smoke_short`" in doc
    assert "--set train.epochs=1 --name smoke_short" in doc  # a variant's command names its --set
    assert "--methods sup_10 --seeds 0 --set train.epochs=1 --set train.lr=0.02 --name smoke_then`" in doc
    assert readme.read_text().endswith("<!-- /results:glance -->\nrest\n") and "old" not in readme.read_text()
    committed = [(path, path.stat().st_mtime_ns) for path in (summarize.README, summarize.DOCS)]
    run_script(summarize, "--results", results)  # results of one's own: the project's documents stay as they are
    assert [(path, path.stat().st_mtime_ns) for path, _ in committed] == committed


def test_seeds_of_one_method_made_with_other_settings_are_named(bench_root):
    run = json.loads((bench_root / "results" / "smoke" / "sup_10_seed0.json").read_text())
    again = json.loads(json.dumps(run)) | {"seed": 1}
    again["config"]["seed"] = 1  # and another machine's workers: the same configuration
    again["config"]["train"]["num_workers"] = run["config"]["train"]["num_workers"] + 1
    assert summarize.settings_note("smoke", {"sup_10": [run, again]}) == ""
    again["config"]["train"]["epochs"] += 1  # made after a default changed
    assert summarize.settings_note("smoke", {"sup_10": [run, again]}) == (
        "Seeds of one method made with other settings (their mean mixes them): sup_10 seed 1 differs from seed 0 in "
        "train.epochs.\n\n")


def test_the_paired_difference_and_its_interval_by_hand():
    s4al = {0: 50.0, 1: 47.0, 2: 46.0}
    random_regions = {0: 48.0, 1: 47.0, 2: 43.0, 3: 40.0}  # seed 3 has no pair
    d = summarize.paired_difference(s4al, random_regions)
    # differences 2, 0, 3: mean 5/3; sample std sqrt(((1/3)^2 + (5/3)^2 + (4/3)^2) / 2) = sqrt(7/3);
    # half-width t(0.975, 2 df) x std / sqrt(3) = 4.303 x 0.881917 = 3.79489
    assert d["seeds"] == [0, 1, 2] and d["differences"] == [2.0, 0.0, 3.0]
    assert d["mean"] == pytest.approx(5 / 3) and d["half_width"] == pytest.approx(3.79489, abs=1e-4)
    assert summarize.paired_difference({0: 50.0}, {0: 45.0, 1: 44.0})["half_width"] is None


def fake_run(method: str, seed: int, miou: float, labelled: float = 0.1) -> dict:
    cycle = {"labelled_fraction": labelled, "val": {"miou": miou}}
    return {"method": method, "seed": seed, "final": {"miou": miou, "labelled_fraction": labelled}, "cycles": [cycle],
            "cost": {"wall_seconds": 600.0, "device": "NVIDIA H200", "side_by_side": 3, "invocations": 1}}


def test_steps_read_back_together_share_the_time_since_the_steps_before():
    """On a GPU the trainer reports 25 steps at once, one time for all: 24 of them are no 0 s steps."""
    assert label_efficiency.step_durations([1.0, 1.0, 1.0, 1.0, 2.0, 2.0]) == [0.25, 0.25, 0.25, 0.25, 0.5, 0.5]
    assert label_efficiency.step_durations([0.5, 1.5, 1.75]) == [0.5, 1.0, 0.25]  # a CPU's, a record a step


def test_the_paired_table_and_the_verdict_say_what_the_seeds_allow():
    groups = {
        "full_supervised": [fake_run("full_supervised", s, 0.5, 1.0) for s in (0, 1, 2)],
        "ssl_10": [fake_run("ssl_10", 0, 0.45)],
        "region_random_ssl": [fake_run("region_random_ssl", s, m, 0.138) for s, m in ((0, 0.48), (1, 0.47), (2, 0.43))],
        "s4al": [fake_run("s4al", s, m, 0.138) for s, m in ((0, 0.50), (1, 0.47), (2, 0.46))],
    }
    rows = summarize.pairs_table(groups).splitlines()
    assert rows[2] == "| s4al − region_random_ssl | 0: +2.0, 1: +0.0, 2: +3.0 | +1.7 | -2.1 to +5.5 |"
    assert rows[3] == "| s4al − ssl_10 | 0: +5.0 | +5.0 | n/a |" and len(rows) == 4  # no s4al_paper
    variant = {"s4al_margin": [fake_run("s4al_margin", s, m, 0.138) for s, m in ((1, 0.48), (2, 0.45))]}
    assert summarize.pairs_table({**groups, **variant}).splitlines()[4:] == [
        "| s4al − s4al_margin | 1: -1.0, 2: +1.0 | +0.0 | -12.7 to +12.7 |"]  # t(1) = 12.706: ±12.706 * 1.414 / 1.414
    assert "| s4al | 0, 1, 2 | 13.80 | 47.7 ± 2.1 | 95.3% | 10 min (NVIDIA H200, 3 side by side) |" in (
        summarize.main_table(groups))
    for run in groups["region_random_ssl"][:2]:  # cycle 0 taken from s4al, which trained it for 3 and 6 minutes
        run["cost"]["cycle0_lender_train_seconds"] = 180.0 * (run["seed"] + 1)
    assert "| region_random_ssl | 0, 1, 2 | 13.80 | 46.0 ± 2.6 | 92.0% | 13 min (NVIDIA H200, 3 side by side) |" in (
        summarize.main_table(groups))  # (13 + 16 + 10) / 3
    verdict = summarize.verdict("paper", groups)
    assert verdict.startswith("`paper`: missing sup_10 seeds 0, 1, 2; ssl_10 seeds 1, 2; s4al_paper seeds 0, 1, 2.")
    assert ("at 95.3% of full supervision with 13.8% of the pixels: it does not meet the paper's 97% at 13.8%; its mean "
            "curve never reaches 97% (the target: at most 12% of the pixels); it is") in verdict
    assert "not distinguishable from `region_random_ssl` (+1.7 points, 95% interval -2.1 to +5.5, 3 seeds)" in verdict
    assert "+5.0 points from `ssl_10` on one seed (no interval)" in verdict
    groups["ssl_10"] = [fake_run("ssl_10", 7, 0.4, 0.1)]  # a seed s4al has not run (a window stopped early)
    assert "not yet paired with `ssl_10` (no seed run by both)" in summarize.verdict("paper", groups)


@pytest.mark.parametrize("labelled, miou, met", [(0.1383, 0.49, "meets"), (0.1383, 0.48, "does not meet"),
                                                 (0.1386, 0.49, "does not meet")])
def test_the_verdict_reads_the_papers_13_8_percent_at_its_precision(labelled, miou, met):
    """CamVid's budget in regions is 13.83% of the pixels, which the paper states as 13.8%; 13.86% is 13.9%."""
    groups = {"full_supervised": [fake_run("full_supervised", 0, 0.5, 1.0)],
              "s4al": [fake_run("s4al", 0, miou, labelled)]}  # 98% or 96% of full supervision
    assert f"of the pixels: it {met} the paper's 97% at 13.8%" in summarize.verdict("paper", groups)


def test_a_share_of_full_supervision_is_taken_on_the_seeds_both_ran():
    """Full supervision's seed 0 is its best: a method run on seed 0 alone is compared with it there,
    not with the mean of seeds it did not run."""
    groups = {"full_supervised": [fake_run("full_supervised", s, m, 1.0) for s, m in ((0, 0.48), (1, 0.46), (2, 0.46))],
              "image_coreset": [fake_run("image_coreset", 0, 0.45)]}
    assert "| image_coreset | 0 | 10.00 | 45.0 | 93.8% |" in summarize.main_table(groups)  # 45 / 48, not 45 / 46.7
    groups["image_coreset"] = [fake_run("image_coreset", 7, 0.45)]  # no seed shared: the mean, marked
    assert "| image_coreset | 7 | 10.00 | 45.0 | 96.4%† |" in summarize.main_table(groups)


def test_the_verdict_decides_on_the_numbers_it_shows():
    """96.96% is shown as 97.0%: it meets 97%; 12.04% of the pixels is shown as 12.0%: within 12%."""
    groups = {"full_supervised": [fake_run("full_supervised", 0, 0.47, 1.0)],
              "s4al": [fake_run("s4al", 0, 0.455699, 0.1383)]}
    groups["s4al"][0]["cycles"] = [{"labelled_fraction": 0.1, "val": {"miou": 0.40}},
                                   {"labelled_fraction": 0.12004, "val": {"miou": 0.4559}},
                                   {"labelled_fraction": 0.1383, "val": {"miou": 0.455699}}]
    verdict = summarize.verdict("paper", groups)
    assert "S4AL is at 97.0% of full supervision with 13.8% of the pixels: it meets the paper's 97% at 13.8%" in verdict
    assert "first reaches 97% at 12.0% of the pixels (`s4al`, cycle 1), within the target of at most 12%" in verdict


def test_the_verdict_finds_the_first_cycle_whose_mean_reaches_97_percent_of_full_supervision():
    def s4al(seed: int, *curve: tuple[float, float]) -> dict:
        run = fake_run("s4al", seed, curve[-1][1], curve[-1][0])
        run["cycles"] = [{"labelled_fraction": f, "val": {"miou": m}} for f, m in curve]
        return run

    reference = [fake_run("full_supervised", s, 0.5, 1.0) for s in (0, 1)]  # 97%: 0.485
    # cycle 1: mean 0.486 at 11.875% (reached); cycle 0 mean 0.40
    early = [s4al(0, (0.1, 0.41), (0.1175, 0.49), (0.1375, 0.50)), s4al(1, (0.1, 0.39), (0.12, 0.482), (0.1375, 0.49))]
    verdict = summarize.verdict("paper", {"full_supervised": reference, "s4al": early})
    assert "its mean curve first reaches 97% at 11.9% of the pixels (`s4al`, cycle 1), within the target of at most 12%" in verdict
    # cycle 1's mean 0.4845 falls short by 0.0005: the final cycle, at 13.75%, is the first
    late = [s4al(0, (0.1, 0.41), (0.1175, 0.489), (0.1375, 0.50)), s4al(1, (0.1, 0.39), (0.12, 0.48), (0.1375, 0.49))]
    verdict = summarize.verdict("paper", {"full_supervised": reference, "s4al": late})
    assert "first reaches 97% at 13.8% of the pixels (`s4al`, cycle 2), above the target of at most 12%" in verdict
    # the same learner buying 2 cells an image a cycle reaches it at its final cycle, 11.9%
    fewer = [s4al(seed, (0.1, 0.40), (0.109, 0.45), (0.119, 0.49)) for seed in (0, 1)]
    verdict = summarize.verdict("paper", {"full_supervised": reference, "s4al": late, "s4al_30x30x2": fewer})
    assert "first reaches 97% at 11.9% of the pixels (`s4al_30x30x2`, cycle 2), within the target" in verdict


def test_the_bought_table_averages_each_seeds_class_shares_over_its_cycles():
    def run(seed: int, *bought: dict) -> dict:
        return {"seed": seed, "cycles": [{"bought": {"class_pixels": b}} for b in bought]}

    groups = {
        "s4al": [run(0, {"Car": 20, "void": 0}, {"Car": 10, "void": 10}), run(1, {"Car": 5, "void": 15}, {})],
        "ssl_10": [run(0, {"Car": 0, "void": 0})],  # bought nothing: no row
    }
    # seed 0: Car 75%, seed 1: Car 25%; pooling the pixels instead would give Car 35/60
    table = summarize.bought_table(groups).splitlines()
    assert table == ["| method | Car | void |", "|---|---|---|", "| s4al | 50.0 | 50.0 |"]
    assert summarize.bought_table({"ssl_10": groups["ssl_10"]}) == ""


def python_job(tmp_path: Path, label: str, code: str, ready=None) -> Job:
    return Job(label, (sys.executable, "-c", code), tmp_path / f"{label}.log", ready=ready)


def test_a_window_keeps_k_running_and_starts_the_next_when_one_ends(tmp_path):
    code = "import sys, time; print('start', time.time(), flush=True); time.sleep({}); print('end', time.time())"
    jobs = [python_job(tmp_path, name, code.format(seconds))
            for name, seconds in (("long", 4.0), ("short", 0.5), ("third", 0.1))]
    jobs.append(python_job(tmp_path, "broken", "raise SystemExit(3)"))
    outcome = run_window(jobs, 60, parallel=2, report=lambda line: None)
    assert sorted(outcome.finished) == ["long", "short", "third"] and outcome.failed == ["broken"]
    assert outcome.stopped == outcome.not_started == []
    times = {job.label: [float(line.split()[1]) for line in job.log.read_text().splitlines()[1:]]
             for job in jobs[:3]}
    assert times["short"][1] <= times["third"][0] < times["long"][1]  # third took short's place, beside long


def test_a_window_over_two_gpus_runs_k_on_each_and_each_job_sees_its_own(tmp_path):
    last = tmp_path / "job3.started"  # job0 runs until job3 has started (at most 30 s): a loaded machine's pace
    code = ("import os, pathlib, time; print('start', time.time(), os.environ['CUDA_VISIBLE_DEVICES'], flush=True); "
            "pathlib.Path({mark!r}).touch() if {is_last} else None; time.sleep({seconds})\n"
            "while {wait} and not os.path.exists({last!r}) and time.time() < {deadline}: time.sleep(0.05)\n"
            "print('end', time.time())")
    deadline = time.time() + 30
    jobs = [python_job(tmp_path, f"job{k}", code.format(
                mark=str(last), is_last=k == 3, seconds=seconds, wait=k == 0, last=str(last), deadline=deadline))
            for k, seconds in enumerate((0.0, 1.0, 0.1, 0.1))]
    lines = []
    outcome = run_window(jobs, 60, parallel=1, report=lines.append, gpus=["2", "5"])
    assert sorted(outcome.finished) == ["job0", "job1", "job2", "job3"]
    runs = {}
    for job in jobs:
        start, end = [line for line in job.log.read_text().splitlines() if line.startswith(("start ", "end "))]
        runs[job.label] = (float(start.split()[1]), float(end.split()[1]), start.split()[2])
    assert [runs[f"job{k}"][2] for k in range(2)] == ["2", "5"]  # one on each at first
    assert runs["job2"][2] == runs["job3"][2] == "5"  # job1's GPU freed first; job0 holds GPU 2 meanwhile
    assert runs["job1"][1] <= runs["job2"][0] and runs["job2"][1] <= runs["job3"][0] < runs["job0"][1]
    assert any(line.endswith(f"started job0 on GPU 2 (log: {jobs[0].log})") for line in lines)


def test_a_window_starts_a_ready_job_before_one_that_is_not_but_never_leaves_a_slot_idle(tmp_path):
    made = tmp_path / "made"
    start = "import os, time; print('start', time.time(), os.path.exists({!r}), flush=True); time.sleep({})"
    jobs = [python_job(tmp_path, "maker", f"import time; time.sleep(1.0); open({str(made)!r}, 'w'); time.sleep(5.0)"),
            python_job(tmp_path, "user", start.format(str(made), 0), ready=made.exists),
            python_job(tmp_path, "other", start.format(str(made), 3.0)),
            python_job(tmp_path, "never", start.format(str(made), 0), ready=lambda: False)]
    outcome = run_window(jobs, 60, parallel=2, report=lambda line: None)
    assert sorted(outcome.finished) == ["maker", "never", "other", "user"]
    starts = {job.label: job.log.read_text().splitlines()[1].split()[1:] for job in jobs[1:]}
    assert starts["other"][1] == "False" and starts["user"][1] == "True"  # other took the slot until made existed
    # ... and never, not ready ever, still ran once nothing else was waiting
    assert float(starts["other"][0]) < float(starts["user"][0]) < float(starts["never"][0])


def test_a_window_leaves_a_job_that_no_longer_fits_to_a_rerun_and_ends_when_only_such_jobs_wait(tmp_path):
    sleep = "import time; time.sleep({})"
    jobs = [python_job(tmp_path, "first", sleep.format(2.0)),  # unknown length
            dataclasses.replace(python_job(tmp_path, "fits_at_first", sleep.format(0)), seconds=4.0)]
    seconds, lines = 8.0, []  # 5 s to use (3 s of grace): fits_at_first fits until first has taken 1 s of it
    started = time.monotonic()
    outcome = run_window(jobs, seconds, parallel=1, report=lines.append)
    assert 2.0 <= time.monotonic() - started < 4.5  # it ended with first, not at its limit (5 s)
    assert outcome.finished == ["first"] and outcome.too_long == ["fits_at_first"]
    assert outcome.not_started == outcome.stopped == [] and not jobs[1].log.exists()
    assert any(re.search(r"fits_at_first not started: expected to take 4 s, [34] s left", line) for line in lines)


def test_a_job_longer_than_any_window_starts_to_go_on_over_reruns_and_knows_when_it_was_started(tmp_path):
    code = "import os, time; print(os.environ['WINDOW_STARTED_AT'], time.time(), flush=True); time.sleep(60)"
    job = dataclasses.replace(python_job(tmp_path, "long", code), seconds=100.0)
    before = time.time()
    outcome = run_window([job], 8.0, parallel=1, report=lambda line: None)
    assert outcome.stopped == ["long"] and outcome.too_long == []
    window_start, own_start = map(float, job.log.read_text().splitlines()[1].split())
    assert before <= window_start <= own_start


def test_a_window_interrupts_what_runs_at_its_end_and_returns_in_time(tmp_path):
    trap = ("import time\ntry:\n    print('running', flush=True); time.sleep(60)\n"
            "except KeyboardInterrupt:\n    print('interrupted', flush=True); raise")
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('deaf', flush=True); time.sleep(60)"
    jobs = [python_job(tmp_path, "trap", trap), python_job(tmp_path, "stubborn", stubborn),
            python_job(tmp_path, "queued", "print('never')")]
    seconds = 8.0
    started = time.monotonic()
    outcome = run_window(jobs, seconds, parallel=2, report=lambda line: None)
    elapsed = time.monotonic() - started
    assert seconds - stop_grace(seconds) <= elapsed < seconds
    assert outcome.stopped == ["trap", "stubborn"] and outcome.not_started == ["queued"]
    assert outcome.finished == outcome.failed == []
    assert "interrupted" in jobs[0].log.read_text()  # SIGINT reached it: it could unwind
    assert not jobs[2].log.exists()


def test_a_window_whose_reports_can_no_longer_be_written_still_waits_for_each_job_to_stop(tmp_path):
    """A `timeout` stops the pipe the window reports into (tee) with it: the jobs still unwinding
    (saving a checkpoint) are waited for all the same, not killed with the window."""
    slow = ("import time\ntry:\n    print('running', flush=True); time.sleep(60)\n"
            "except KeyboardInterrupt:\n    time.sleep(1.0); print('saved', flush=True); raise")
    jobs = [python_job(tmp_path, f"job{k}", slow) for k in range(2)]

    def broken(line: str) -> None:
        if "stopped" in line:
            raise BrokenPipeError(32, "Broken pipe")

    outcome = run_window(jobs, 8.0, parallel=2, report=broken)
    assert outcome.stopped == ["job0", "job1"] and all("saved" in job.log.read_text() for job in jobs)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_window_interrupted_itself_stops_its_jobs_before_it_exits(tmp_path, stop):
    """Ctrl-C (SIGINT) or a `timeout` (SIGTERM): the jobs are interrupted and can unwind; a SIGKILL
    leaves the window no time, and the jobs die with it."""
    log = tmp_path / "child.log"
    trap = ("import os, time\ntry:\n    print('running', os.getpid(), flush=True); time.sleep(60)\n"
            "except KeyboardInterrupt:\n    print('interrupted', flush=True); raise")
    parent = (f"import sys; sys.path.insert(0, {str(Path(label_efficiency.__file__).parent)!r})\n"
              f"from pathlib import Path\nfrom window import Job, run_window\n"
              f"run_window([Job('child', (sys.executable, '-c', {trap!r}), Path({str(log)!r}))], 60, 1)")
    window = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.monotonic() + 30
    def lines() -> list[str]:  # the child's output, not the command line logged above it
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if line.startswith(("running ", "interrupted"))]

    while not lines() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(lines()[0].removeprefix("running "))
    window.send_signal(stop)
    assert window.wait(timeout=stop_grace(60) + 5) != 0
    if stop != signal.SIGKILL:
        assert lines()[1] == "interrupted"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # nothing left running (a SIGKILL is the child's own, at once)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the window's job {child} outlived it")


def make_camvid(root: Path, split: str, count: int, rng: np.random.Generator) -> None:
    """CamVid's layout with 48x64 images: labels of random 8x8 blocks of classes 0-11 (11 = void)."""
    for k in range(count):
        label = np.kron(rng.integers(0, 12, (6, 8)), np.ones((8, 8), int)).astype(np.uint8)
        image = (np.stack([label * 20, 255 - label * 20, label * 7], -1) + rng.integers(0, 20, (48, 64, 3))).astype(np.uint8)
        for folder, array in ((split, image), (f"{split}annot", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{split}_{k:02d}.png")


def test_the_synthetic_protocol_takes_its_encoder_from_weights_and_names_a_missing_file(tmp_path, capsys):
    synthetic = label_efficiency.PROTOCOLS["synthetic"]
    config = label_efficiency.method_config(synthetic, label_efficiency.METHODS["s4al"], 0, tmp_path, tmp_path / "w.pth")
    assert config.model.weights == str((tmp_path / "w.pth").resolve())
    with pytest.raises(SystemExit):
        label_efficiency.main(["--protocol", "synthetic", "--weights", str(tmp_path / "w.pth"),
                               "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")])
    assert f"ImageNet MobileNetV2 weights not found at {tmp_path / 'w.pth'} (give --weights)" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_a_data_root_with_a_test_split_reports_test_miou_beside_val_for_every_cycle(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "camvid"
    for split, count in (("train", 20), ("val", 3)):
        make_camvid(root, split, count, rng)
    assert "test_split" not in camvid_paths(root, tmp_path)["dataset"]
    make_camvid(root, "test", 3, rng)
    tiny = label_efficiency.Protocol("camvid", {k: v for k, v in SMOKE_OVERRIDES.items() if k != "dataset"},
                                     seeds=(0,), region_scale=48 / 360)
    monkeypatch.setitem(label_efficiency.PROTOCOLS, "tiny", tiny)
    results = tmp_path / "results"
    run_script(label_efficiency, "--protocol", "tiny", "--methods", "s4al", "--data-root", root, "--weights", root,
               "--set", "model.weights=null", "--name", "tiny_random_init", "--results", results,
               "--work", tmp_path / "work")
    result = json.loads((results / "tiny_random_init" / "s4al_seed0.json").read_text())
    assert result["config"]["dataset"]["test_split"] == "test"
    assert [c["cycle"] for c in result["cycles"]] == [0, 1]
    for cycle in result["cycles"]:
        assert set(cycle["test"]["iou"]) == set(cycle["val"]["iou"]) and 0 <= cycle["test"]["miou"] <= 1
    assert result["final"]["test_miou"] == result["cycles"][-1]["test"]["miou"]
    table = summarize.main_table(summarize.load_results(results / "tiny_random_init"))
    assert "test mIoU" in table.splitlines()[0] and table.count("(test ") == 2  # one per cycle


def test_a_peak_read_a_few_pages_below_its_baseline_is_the_baseline_not_a_negative_increase():
    cpu = torch.device("cpu")
    # The kernel's approximate counters once read 1421.0 MiB after a baseline of 1421.2; a baseline
    # 1 GiB above the resident set stands for that without depending on the counters' luck.
    above = speed.memory_start(cpu) + 1024
    assert speed.memory_increase(above, cpu) == {
        "kind": "rss_high_water", "baseline_mib": round(above, 1), "peak_mib": round(above, 1), "increase_mib": 0.0}


def test_speed_smoke_writes_each_part_as_it_is_measured_and_records_a_failed_part(tmp_path, monkeypatch):
    out = tmp_path / "speed" / "test.json"
    seen_on_disk = []

    def loaders_stalled(*args):
        seen_on_disk.append(json.loads(out.read_text()))  # what a run stopped here would leave
        raise RuntimeError("loaders stalled")

    monkeypatch.setattr(speed, "data_loading", loaders_stalled)
    assert speed.main([str(a) for a in ("--smoke", "--fast", "--out", tmp_path, "--tag", "test", "--profile", "1")]) == 1
    [partial] = seen_on_disk
    assert partial["pending"] == ["data_loading", "pool_scoring", "pool_memory", "profile"]
    assert partial["fast"]["ssl_iteration"]["iteration_seconds"] and partial["ssl_iteration"]["iteration_seconds"]
    result = json.loads(out.read_text())
    assert result["pending"] == [] and list(result["errors"]) == ["data_loading"]
    assert result["errors"]["data_loading"].strip().endswith("RuntimeError: loaders stalled")
    assert "data_loading" not in result
    for path in (result, result["fast"]):  # the loader path and the fast path, side by side
        a = path["ssl_iteration"]
        assert set(a["passes_seconds_median"]) == {
            "student_labelled", "student_unlabelled_mixed", "student_replay_mixed", "teacher_unlabelled_and_replay"}
        assert len(a["iteration_seconds"]) == 2 and a["memory"]["peak_mib"] >= a["memory"]["baseline_mib"] > 0
        assert a["cuda_graphs"] is False  # CUDA only
        assert len(path["supervised_iteration"]["iteration_seconds"]) == 2
    b = result["pool_scoring"]
    rates = ["plain", "plain_read", "scoring", "evaluation", "scoring_cached", "evaluation_cached"]
    assert all(b[f"{name}_images_per_s"] > 0 for name in rates) and b["cache_decode_s"] > 0
    assert [m["images"] for m in result["pool_memory"]] == [8, 16]
    assert result["fast_graphs"] is None  # timed on a GPU only
    assert MACHINE_KEYS <= set(result["machine"])
    table = (tmp_path / "speed" / "test.md").read_text()
    assert "fast path, eager (cuda_graphs false)" in table and "evaluation from the device cache" in table
    assert "(d) loaders alone" not in table and "data_loading failed: `RuntimeError: loaders stalled`" in table
    profile = (tmp_path / "speed" / "test-profile.txt").read_text()
    assert "1 iterations, train.fast auto (loader path), CUDA graphs off, by self_cpu_time_total" in profile and "aten::convolution" in profile


def test_first_run_records_a_failing_step_with_its_exit_code_and_output(tmp_path):
    assert first_run.main(["--only", "demo", "--set", "train.epochs=0", "--out", str(tmp_path), "--tag", "t"]) == 1
    result = json.loads((tmp_path / "first_run" / "t.json").read_text())
    demo = result["steps"]["demo"]
    assert demo["exit_code"] == 2 and demo["failed"].endswith("--out WORK/demo --quiet --set train.epochs=0")
    assert "train.epochs" in demo["output_tail"] and list(result["steps"]) == ["demo"]
    assert "| make demo |" in (tmp_path / "first_run" / "t.md").read_text()


def test_the_annotation_scale_benchmark_answers_reimports_reads_and_skips_every_region(tmp_path):
    args = ["--images", "6", "--export-images", "3", "--regions", "2", "--size", "60", "90", "--out", str(tmp_path)]
    assert annotation_scale.main(args) == 0
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    outputs = {name: step["output_tail"] for name, step in result["results"].items()}
    assert list(outputs) == ["start_up", "import_masks", "import_masks_again", "import_export", "import_export_again",
                             "status", "read_labels", "skip_all"]
    assert "answered 12 regions (png-folder)" in outputs["import_masks"]
    assert "6 masks already imported" in outputs["import_masks_again"]
    assert "answered 6 regions (label-studio), 0 unpainted" in outputs["import_export"]
    assert "3 tasks already imported" in outputs["import_export_again"]
    assert "12 answered" in outputs["status"] and outputs["read_labels"] == "12\n"
    assert "refuses" not in outputs["status"] and "to join" not in outputs["status"]  # the run's own dataset
    assert "skipped 12 regions" in outputs["skip_all"]
    assert all(step["seconds"] > 0 and step["peak_mib"] > 0 for step in result["results"].values())


def test_jpeg_copy_keeps_labels_and_lists_and_loads_as_camvid(tmp_path):
    source = tmp_path / "camvid"
    gradient = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (12, 1))
    for split, name in (("train", "a"), ("val", "b"), ("test", "c")):
        (source / split).mkdir(parents=True)
        (source / f"{split}annot").mkdir()
        Image.fromarray(np.stack([gradient, gradient[:, ::-1], gradient], -1)).save(source / split / f"{name}.png")
        Image.fromarray((gradient // 24).astype(np.uint8)).save(source / f"{split}annot" / f"{name}.png")
        (source / f"{split}.txt").write_text(f"{split}/{name}.png {split}annot/{name}.png\n")
    run_script(jpeg_camvid, source, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert (copy / "train.txt").read_text() == "train/a.jpg trainannot/a.png\n"
    assert (copy / "test.txt").read_text() == "test/c.jpg testannot/c.png\n"  # a test split travels too
    assert (copy / "valannot" / "b.png").read_bytes() == (source / "valannot" / "b.png").read_bytes()
    original, jpeg = CamVid(source, "train").load(0), CamVid(copy, "train").load(0)
    assert np.array_equal(jpeg.label, original.label)
    assert np.abs(jpeg.image.astype(int) - original.image.astype(int)).max() <= 8  # quality 95


def test_the_gpu_checks_script_runs_its_stages_and_names_a_cuda_graphs_variant_apart(tmp_path):
    """benchmarks/gpu_checks.sh at smoke sizes on the CPU (SMOKE=1): speed.py's files, and the
    comparison's results and logs archived, under the variant's own name when CUDA_GRAPHS is given."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable, "WORK": str(tmp_path / "work"), "CUDA_GRAPHS": "false",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(script), str(tmp_path / "out"), "400", "sup_10"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "speed" / "smoke.json").read_text())["settings"]["smoke"] is True
    shutil.unpack_archive(tmp_path / "out" / "label_efficiency.tgz", tmp_path / "unpacked", filter="data")
    variant = "smoke_checks_cuda_graphs_false"
    result = json.loads((tmp_path / "unpacked" / "label_efficiency" / variant / "sup_10_seed0.json").read_text())
    assert result["extra_overrides"] == {"train": {"cuda_graphs": False}} and result["config"]["train"]["cuda_graphs"] is False
    assert (tmp_path / "unpacked" / variant / "logs" / "sup_10_seed0.log").exists()
    run = tmp_path / "unpacked" / variant / "sup_10_seed0"  # the run's small files, not its checkpoints
    assert (run / "metrics.jsonl").exists() and (run / "starts.jsonl").exists() and not (run / "checkpoints").exists()
    assert not (tmp_path / "out" / "label_efficiency").exists()  # archived, then removed
    files = sorted(path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*") if path.is_file())
    assert files == ["gpu_checks.log", "label_efficiency.tgz", "speed/smoke.json", "speed/smoke.md"]  # of 8 at most
    # a later call on the machine continues the same runs: the variant is kept with them
    env.pop("CUDA_GRAPHS")
    again = subprocess.run(["bash", str(script), str(tmp_path / "out2"), "400", "sup_10"], env={**env, "STAGES": "compare"},
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"[{variant}] finished: sup_10 seed 0" in again.stdout, again.stdout[-3000:]


def test_a_whole_run_is_estimated_from_the_counted_steps_and_the_measured_rates():
    """CamVid's paper protocol: cycles of 100, 100 and 200 epochs of 50 steps, the first 10 of each
    supervised alone: 1,500 supervised and 18,500 SSL steps, 10 + 10 + 20 evaluations, 2 pool scorings."""
    counts = speed.run_counts(load_config("camvid", {"dataset": {"name": "synthetic", "root": None}}))
    assert (counts["cycles"], counts["supervised_steps"], counts["ssl_steps"], counts["evaluations"],
            counts["pool_scorings"]) == (3, 1500, 18500, 40, 2)
    counts.update(val_images=100, pool_images=300)
    path = {"supervised_iteration": {"iteration_seconds_median": 0.002}, "ssl_iteration": {"iteration_seconds_median": 0.01}}
    rates = {"evaluation_images_per_s": 100.0, "scoring_images_per_s": 60.0,
             "evaluation_cached_images_per_s": 2000.0, "scoring_cached_images_per_s": 1000.0}
    # 1,500 x 2 ms + 18,500 x 10 ms + 40 x 100 images / rate + 2 x 300 images / rate
    assert speed.whole_run_seconds(counts, path, rates, cached=False) == pytest.approx(3 + 185 + 40 + 10)
    assert speed.whole_run_seconds(counts, path, rates, cached=True) == pytest.approx(3 + 185 + 2 + 0.6)
    assert speed.whole_run_seconds(counts, path, None, cached=False) is None  # (b) not measured yet
