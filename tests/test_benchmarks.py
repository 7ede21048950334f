"""The benchmark scripts at smoke size, through their command-line entry points (in this process,
to pay torch's import once): label_efficiency.py (two quick methods, skip-if-exists, resume),
summarize.py, speed.py --smoke, pseudo_labels.py, class_shares.py, learning_curves.py,
jpeg_camvid.py and retrain_final.py; and gpu_window.sh, which starts its own processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s4al.data.camvid import CamVid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import class_shares  # noqa: E402
import jpeg_camvid  # noqa: E402
import label_efficiency  # noqa: E402
import learning_curves  # noqa: E402
import pseudo_labels  # noqa: E402
import retrain_final  # noqa: E402
import speed  # noqa: E402
import summarize  # noqa: E402

MACHINE_KEYS = {"cpu", "cpu_count", "gpu", "torch", "smp", "git_commit", "date"}


def run_script(module, *args) -> None:
    assert module.main([str(a) for a in args]) == 0


def run_smoke_protocol(root: Path) -> None:
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "full_supervised", "sup_10",
               "--results", root / "results", "--work", root / "work")


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    run_smoke_protocol(root)
    return root


def test_one_result_per_method_and_seed(bench_root):
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
    full = json.loads((results / "full_supervised_seed0.json").read_text())
    assert full["final"]["labelled_fraction"] == 1.0 and full["config"]["ssl"]["enabled"] is False


def test_a_set_variant_goes_to_its_own_folder_with_its_overrides(bench_root):
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "sup_10", "--set", "train.epochs=1",
               "--name", "smoke_short", "--results", bench_root / "results", "--work", bench_root / "work")
    result = json.loads((bench_root / "results" / "smoke_short" / "sup_10_seed0.json").read_text())
    assert result["protocol"] == "smoke_short" and result["extra_overrides"] == {"train": {"epochs": 1}}
    assert result["config"]["train"]["epochs"] == 1
    assert result["timings"]["steps"]["0"]["steps"] < 8  # fewer than the protocol's own sup_10
    with pytest.raises(SystemExit):
        label_efficiency.parse_args(["--protocol", "smoke", "--set", "train.epochs=1"])  # no --name


def test_existing_results_are_skipped_and_missing_ones_resume(bench_root, capsys):
    results = bench_root / "results" / "smoke"
    kept = (results / "full_supervised_seed0.json").read_bytes()
    (results / "sup_10_seed0.json").unlink()
    run_smoke_protocol(bench_root)
    assert "full_supervised seed 0] skipped" in capsys.readouterr().out
    assert (results / "full_supervised_seed0.json").read_bytes() == kept
    resumed = json.loads((results / "sup_10_seed0.json").read_text())
    assert resumed["timings"]["resumed"] is True and resumed["timings"]["steps"] == {}  # nothing left to train


def test_summarize_writes_table_and_plot(bench_root, capsys):
    results = bench_root / "results"
    run_script(summarize, "--protocol", "smoke", "--results", results)
    summary = (results / "smoke" / "summary.md").read_text()
    assert "| full_supervised | 0 | 100.00 |" in summary and "| sup_10 | 0 | 10.00 |" in summary
    assert (results / "smoke" / "summary.png").stat().st_size > 0
    capsys.readouterr()
    run_script(summarize, "--protocol", "smoke", "--results", results, "--readme")
    table = capsys.readouterr().out
    assert table.startswith("| method | seeds |") and table.count("\n") == 4


def fake_run(method: str, seed: int, miou: float) -> dict:
    cycle = {"labelled_fraction": 0.1, "val": {"miou": miou}}
    return {"method": method, "seed": seed, "final": {"miou": miou, "labelled_fraction": 0.1}, "cycles": [cycle]}


def test_a_variant_table_divides_by_the_reference_protocols_full_supervision():
    variant = {"ssl_10": [fake_run("ssl_10", 0, 0.45), fake_run("ssl_10", 1, 0.43)]}
    full = [fake_run("full_supervised", 0, 0.50), fake_run("full_supervised", 1, 0.46)]
    assert "| ssl_10 | 0, 1 | 10.00 | 44.0 ± 1.4 | 91.7% |" in summarize.main_table(variant, full)
    assert "| 44.0 ± 1.4 | – |" in summarize.main_table(variant)  # no reference in the variant itself


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


def test_pseudo_label_confusions_count_every_valid_pixel_of_the_chosen_images(bench_root):
    checkpoint = bench_root / "work" / "smoke" / "sup_10_seed0" / "checkpoints" / "cycle_0.pt"
    out = bench_root / "pseudo"
    run_script(pseudo_labels, checkpoint, "--name", "sup", "--images", 5, "--threshold", 0.0, "--out", out)
    result = json.loads((out / "sup.json").read_text())
    every, confident = np.array(result["all"]["confusion"]), np.array(result["confident"]["confusion"])
    _, cfg = pseudo_labels.load_trained_model(checkpoint)
    train = pseudo_labels.build_dataset(cfg.dataset, "train", cfg.seed)
    gt = sum(np.bincount(train.load(i).label.ravel(), minlength=256)[: len(result["names"])]
             for i in result["image_indices"])
    assert len(result["image_indices"]) == 5
    assert np.array_equal(every.sum(1), gt)  # rows: ground truth over the valid pixels
    assert np.array_equal(confident, every) and result["confident_share"] == 1  # every max probability > 0
    assert result["pixel_accuracy"] == pytest.approx(np.trace(every) / every.sum())
    present = gt > 0
    assert np.allclose(np.array(result["all"]["row_shares"])[present].sum(1), 1)


def test_offline_argmax_alignment_gives_each_class_its_true_share():
    p1 = torch.linspace(0.01, 0.49, 100)  # class 1 wins no pixel before alignment
    log_probs = torch.stack([1 - p1, p1]).log().view(1, 2, 1, 100).half()
    labels = (torch.arange(100) % 10 < 3).long().view(1, 1, 100)  # 30% class 1
    labels[0, 0, :5] = 255  # ignored pixels count for neither share
    bias = pseudo_labels.argmax_alignment_bias(log_probs, labels)
    winners = (log_probs.float() + bias.view(1, 2, 1, 1)).argmax(1)[labels != 255]
    assert (winners == 1).float().mean().item() == pytest.approx(30 / 95, abs=0.05)  # 1 pixel = 0.01
    bias = pseudo_labels.argmax_alignment_bias(log_probs, labels, target=torch.tensor([8, 2]))  # another share
    winners = (log_probs.float() + bias.view(1, 2, 1, 1)).argmax(1)[labels != 255]
    assert (winners == 1).float().mean().item() == pytest.approx(0.2, abs=0.05)


def test_argmax_aligned_pseudo_labels_are_counted_over_the_same_pixels(bench_root):
    checkpoint = bench_root / "work" / "smoke" / "sup_10_seed0" / "checkpoints" / "cycle_0.pt"
    out = bench_root / "pseudo"
    run_script(pseudo_labels, checkpoint, "--name", "aligned", "--images", 5, "--argmax-alignment", "--out", out)
    result = json.loads((out / "aligned.json").read_text())
    every, aligned = (np.array(result[key]["confusion"]) for key in ("all", "argmax_aligned"))
    assert np.array_equal(aligned.sum(1), every.sum(1))  # the same ground truth, other predictions
    assert len(result["argmax_aligned"]["bias"]) == len(result["names"])
    assert result["argmax_aligned"]["iou"] == pytest.approx(
        list(np.diag(aligned) / np.maximum(aligned.sum(0) + aligned.sum(1) - np.diag(aligned), 1)))
    run_dir = checkpoint.parent.parent
    run_script(pseudo_labels, checkpoint, "--name", "to_labelled", "--images", 5, "--argmax-alignment",
               "--align-to", "labelled", "--out", out)
    to_labelled = json.loads((out / "to_labelled.json").read_text())
    assert to_labelled["align_to"] == "labelled"
    assert to_labelled["argmax_aligned"]["bias"] != result["argmax_aligned"]["bias"]
    train = pseudo_labels.build_dataset(pseudo_labels.load_run_config(run_dir / "config.yaml").dataset, "train", 0)
    counts = class_shares.image_class_counts(train, class_shares.initially_labelled(run_dir, train), len(result["names"]))
    assert torch.equal(pseudo_labels.labelled_counts(checkpoint), torch.from_numpy(counts.sum(0)))


def test_the_candidate_target_is_the_geometric_mean_of_labelled_and_predicted_shares(monkeypatch):
    monkeypatch.setattr(pseudo_labels, "labelled_counts", lambda checkpoint: torch.tensor([3, 1]))  # 0.75, 0.25
    log_probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 1.0]]).log().T.reshape(1, 2, 1, 3)  # mean 1/3, 2/3
    labels = torch.tensor([[[0, 1, 255]]])  # the third pixel is void: predicted shares 0.5, 0.5
    target = pseudo_labels.labelled_x_predicted(Path("unused"), log_probs, labels)
    assert target.tolist() == pytest.approx([(0.75 * 0.5) ** 0.5, (0.25 * 0.5) ** 0.5])


def test_class_shares_of_a_run_count_its_labelled_images_against_all(bench_root):
    run_dir = bench_root / "work" / "smoke" / "sup_10_seed0"
    run_script(class_shares, run_dir, "--name", "smoke", "--out", bench_root / "shares")
    [result] = json.loads((bench_root / "shares" / "smoke.json").read_text())["runs"]
    _, cfg = pseudo_labels.load_trained_model(run_dir / "checkpoints" / "cycle_0.pt")
    train = pseudo_labels.build_dataset(cfg.dataset, "train", cfg.seed)
    ids = (run_dir / "splits" / "initial_labelled.txt").read_text().split()
    labelled = [i for i in range(len(train)) if train.image_id(i) in ids]
    counts = sum(np.bincount(train.load(i).label.ravel(), minlength=256)[: len(result["classes"])] for i in labelled)
    assert result["labelled_images"] == len(ids) == len(labelled)
    assert result["labelled_share"] == pytest.approx(list(counts / counts.sum()))
    assert sum(result["train_share"]) == pytest.approx(1)
    assert result["aligner_bias"] is None and result["aligner_target"] is None  # supervised: no aligner


def test_resampled_shares_of_identical_images_have_no_spread_and_of_two_kinds_span_both():
    same = np.array([[3, 1], [3, 1], [3, 1]])
    low, high = class_shares.shares_interval(same)
    assert list(low) == list(high) == [0.75, 0.25]
    low, high = class_shares.shares_interval(np.array([[1, 0]] * 10 + [[0, 1]] * 10))
    assert low[0] < 0.5 < high[0] and 0.2 < low[0] and high[0] < 0.8  # 20 coin flips: 0.5 +- about 0.18


def write_curve(path: Path, mious: dict[int, float], pole: float = 0.5) -> Path:
    records = [{"cycle": 0, "epoch": e, "step": 50 * e, "miou": m, "iou": {"Pole": pole}} for e, m in mious.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in records + [dict(records[0], cycle=1, miou=0.99)]))
    return path


def test_a_retrained_final_cycle_repeats_the_run_and_differs_without_its_regions_or_with_another_setting(tmp_path):
    run_script(label_efficiency, "--protocol", "smoke", "--methods", "s4al", "--results", tmp_path / "results",
               "--work", tmp_path / "work")
    run_dir = tmp_path / "work" / "smoke" / "s4al_seed0"
    common = ("--work", tmp_path / "retrain", "--out", tmp_path / "out")
    run_script(retrain_final, run_dir, "--name", "same", *common)
    run_script(retrain_final, run_dir, "--name", "without", "--without-regions", *common)
    run_script(retrain_final, run_dir, "--name", "no_cw", "--set", "ssl.confidence_weighting=false", *common)
    same, without, no_cw = (json.loads((tmp_path / "out" / f"{name}.json").read_text())
                            for name in ("same", "without", "no_cw"))
    assert same["val"] == same["source_val"]  # same labels and seeds: the same training, bit for bit
    assert without["regions_in_source"] > 0 and without["val"]["miou"] != without["source_val"]["miou"]
    assert no_cw["overrides"] == {"ssl": {"confidence_weighting": False}}
    assert no_cw["val"]["miou"] != no_cw["source_val"]["miou"]
    assert "confidence_weighting: true" in (run_dir / "config.yaml").read_text()  # the source folder is untouched
    assert MACHINE_KEYS <= set(without["machine"])


def test_learning_curves_tabulate_each_evaluated_epoch_and_mark_the_missing(tmp_path, capsys):
    done = write_curve(tmp_path / "sup_10_seed0.jsonl", {10: 0.4, 20: 0.45, 30: 0.47})
    stopped = tmp_path / "ssl" / "ssl_10_seed0"  # a run folder, stopped after epoch 20
    stopped.mkdir(parents=True)
    write_curve(stopped / "metrics.jsonl", {10: 0.41, 20: 0.462}, pole=0.031)
    run_script(learning_curves, done, stopped, "--classes", "Pole", "--every", "10")
    out = capsys.readouterr().out
    assert "| epoch | sup_10_seed0 | ssl_10_seed0 |" in out
    assert "| 20 | 45.0 | 46.2 |" in out and "| 30 | 47.0 | – |" in out  # cycle 1's 0.99 is not shown
    assert "| 20 | 50.0 | 3.1 |" in out.split("Pole IoU")[1]
    with pytest.raises(SystemExit):
        learning_curves.main([str(done), "--classes", "Bicyclist"])


def test_jpeg_copy_keeps_labels_and_lists_and_loads_as_camvid(tmp_path):
    source = tmp_path / "camvid"
    gradient = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (12, 1))
    for split, name in (("train", "a"), ("val", "b")):
        (source / split).mkdir(parents=True)
        (source / f"{split}annot").mkdir()
        Image.fromarray(np.stack([gradient, gradient[:, ::-1], gradient], -1)).save(source / split / f"{name}.png")
        Image.fromarray((gradient // 24).astype(np.uint8)).save(source / f"{split}annot" / f"{name}.png")
        (source / f"{split}.txt").write_text(f"{split}/{name}.png {split}annot/{name}.png\n")
    run_script(jpeg_camvid, source, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert (copy / "train.txt").read_text() == "train/a.jpg trainannot/a.png\n"
    assert (copy / "valannot" / "b.png").read_bytes() == (source / "valannot" / "b.png").read_bytes()
    original, jpeg = CamVid(source, "train").load(0), CamVid(copy, "train").load(0)
    assert np.array_equal(jpeg.label, original.label)
    assert np.abs(jpeg.image.astype(int) - original.image.astype(int)).max() <= 8  # quality 95


def test_gpu_window_runs_side_by_side_and_reports_a_failed_run(tmp_path):
    script = Path(label_efficiency.__file__).with_name("gpu_window.sh")
    common = f"--protocol smoke --seeds 0 --results {tmp_path / 'results'} --work {tmp_path / 'work'}"
    runs = [f"{common} --methods sup_10", f"{common} --methods full_supervised", "--protocol no_such_protocol"]
    env = os.environ | {"PYTHON": sys.executable}
    done = subprocess.run(["bash", script, "120", tmp_path / "logs", *runs], check=False, env=env)
    assert done.returncode == 1  # the third run failed
    assert sorted(p.name for p in (tmp_path / "results" / "smoke").glob("*.json")) == [
        "full_supervised_seed0.json", "sup_10_seed0.json"]
    assert (tmp_path / "logs" / "3.log").read_text().startswith("run 3: --protocol no_such_protocol")
