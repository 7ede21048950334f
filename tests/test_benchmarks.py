"""The benchmark scripts at smoke size, through their command-line entry points (in this process,
to pay torch's import once, except where --gpu-window starts its own processes):
label_efficiency.py (a time-limited window of runs side by side, skip-if-exists, resume, a
variant, the test split), summarize.py (tables, paired differences, the README's table),
window.py (the scheduler, on plain processes), speed.py --smoke and jpeg_camvid.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4al.config import load_config
from s4al.data.camvid import CamVid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import jpeg_camvid  # noqa: E402
import label_efficiency  # noqa: E402
import speed  # noqa: E402
import summarize  # noqa: E402
from common import SMOKE_OVERRIDES, camvid_paths  # noqa: E402
from window import Job, run_window, stop_grace  # noqa: E402

MACHINE_KEYS = {"cpu", "cpu_count", "gpu", "torch", "smp", "git_commit", "date"}


def run_script(module, *args) -> None:
    assert module.main([str(a) for a in args]) == 0


def run_smoke_protocol(root: Path, *window: str) -> None:
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "full_supervised", "sup_10",
               "--results", root / "results", "--work", root / "work", *window)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    """Both runs side by side as their own processes, within a window they need a fraction of."""
    root = tmp_path_factory.mktemp("bench")
    run_smoke_protocol(root, "--gpu-window", "240", "--parallel", "2")
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
    assert 0 < result["cost"]["wall_seconds"] <= result["timings"]["wall_seconds"] + 1
    full = json.loads((results / "full_supervised_seed0.json").read_text())
    assert full["final"]["labelled_fraction"] == 1.0 and full["config"]["ssl"]["enabled"] is False
    log = (bench_root / "work" / "smoke" / "logs" / "sup_10_seed0.log").read_text()
    assert "--methods sup_10 --seeds 0" in log and "final mIoU" in log


def test_rerunning_a_window_skips_what_exists_and_starts_nothing(bench_root, capsys):
    log = bench_root / "work" / "smoke" / "logs" / "sup_10_seed0.log"
    before = log.read_text()
    started = time.monotonic()
    run_smoke_protocol(bench_root, "--gpu-window", "240", "--parallel", "2")
    assert time.monotonic() - started < 5  # no process started
    out = capsys.readouterr().out
    assert "full_supervised seed 0] skipped" in out and "sup_10 seed 0] skipped" in out
    assert log.read_text() == before


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


def test_summarize_writes_tables_plot_results_doc_and_the_readme_block(bench_root, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(bench_root / "results" / "smoke", results / "smoke")
    variant = json.loads((results / "smoke" / "sup_10_seed0.json").read_text())
    variant.update(protocol="smoke_short", extra_overrides={"train": {"epochs": 1}})
    (results / "smoke_short").mkdir()
    (results / "smoke_short" / "sup_10_seed0.json").write_text(json.dumps(variant))
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
    assert readme.read_text().endswith("<!-- /results:glance -->\nrest\n") and "old" not in readme.read_text()


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
    assert "| s4al | 0, 1, 2 | 13.80 | 47.7 ± 2.1 | 95.3% | 10 min (NVIDIA H200, 3 side by side) |" in (
        summarize.main_table(groups))
    verdict = summarize.verdict("paper", groups)
    assert verdict.startswith("`paper`: missing sup_10 seeds 0, 1, 2; ssl_10 seeds 1, 2; s4al_paper seeds 0, 1, 2.")
    assert "at 95.3% of full supervision with 13.8% of the pixels: it does not meet the paper's 97% at 13.8%" in verdict
    assert "not distinguishable from `region_random_ssl` (+1.7 points, 95% interval -2.1 to +5.5, 3 seeds)" in verdict
    assert "+5.0 points from `ssl_10` on one seed (no interval)" in verdict


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


def python_job(tmp_path: Path, label: str, code: str) -> Job:
    return Job(label, (sys.executable, "-c", code), tmp_path / f"{label}.log")


def test_a_window_keeps_k_running_and_starts_the_next_when_one_ends(tmp_path):
    code = "import sys, time; print('start', time.time(), flush=True); time.sleep({}); print('end', time.time())"
    jobs = [python_job(tmp_path, name, code.format(seconds))
            for name, seconds in (("long", 2.0), ("short", 0.5), ("third", 0.1))]
    jobs.append(python_job(tmp_path, "broken", "raise SystemExit(3)"))
    outcome = run_window(jobs, 60, parallel=2, report=lambda line: None)
    assert sorted(outcome.finished) == ["long", "short", "third"] and outcome.failed == ["broken"]
    assert outcome.stopped == outcome.not_started == []
    times = {job.label: [float(line.split()[1]) for line in job.log.read_text().splitlines()[1:]]
             for job in jobs[:3]}
    assert times["short"][1] <= times["third"][0] < times["long"][1]  # third took short's place, beside long


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


def test_a_window_interrupted_itself_stops_its_jobs_before_it_exits(tmp_path):
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
    window.send_signal(signal.SIGINT)  # as Ctrl-C would
    assert window.wait(timeout=stop_grace(60) + 5) != 0
    assert lines()[1] == "interrupted"
    with pytest.raises(ProcessLookupError):  # nothing left running
        os.kill(child, 0)


def make_camvid(root: Path, split: str, count: int, rng: np.random.Generator) -> None:
    """CamVid's layout with 48x64 images: labels of random 8x8 blocks of classes 0-11 (11 = void)."""
    for k in range(count):
        label = np.kron(rng.integers(0, 12, (6, 8)), np.ones((8, 8), int)).astype(np.uint8)
        image = (np.stack([label * 20, 255 - label * 20, label * 7], -1) + rng.integers(0, 20, (48, 64, 3))).astype(np.uint8)
        for folder, array in ((split, image), (f"{split}annot", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{split}_{k:02d}.png")


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


def test_speed_smoke(tmp_path):
    run_script(speed, "--smoke", "--out", tmp_path, "--tag", "test", "--profile", "1")
    result = json.loads((tmp_path / "speed" / "test.json").read_text())
    a = result["ssl_iteration"]
    assert set(a["passes_seconds_median"]) == {
        "student_labelled", "student_unlabelled_mixed", "student_replay_mixed", "teacher_unlabelled_and_replay"}
    assert a["ratio"] == pytest.approx(a["iteration_seconds_median"] / a["passes_sum_seconds"])
    assert a["memory"]["peak_mib"] >= a["memory"]["baseline_mib"] > 0
    b = result["pool_scoring"]
    assert b["time_ratio"] == pytest.approx(b["plain_images_per_s"] / b["scoring_images_per_s"])
    assert b["time_ratio_read"] == pytest.approx(b["plain_read_images_per_s"] / b["scoring_images_per_s"])
    assert [m["images"] for m in result["pool_memory"]] == [8, 16]
    assert result["data_loading"]["loader_steps_per_s"] > 0 and result["data_loading"]["train_steps_per_s"] > 0
    assert MACHINE_KEYS <= set(result["machine"])
    assert "iteration / passes" in (tmp_path / "speed" / "test.md").read_text()
    profile = (tmp_path / "speed" / "test-profile.txt").read_text()
    assert "1 iterations, by self_cpu_time_total" in profile and "aten::convolution" in profile


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
