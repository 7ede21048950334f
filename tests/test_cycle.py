"""The active-learning cycle end to end on tiny synthetic runs (s4al/active/cycle.py): labelled-fraction
accounting, per-cycle summaries, what each acquisition mode buys, what the next cycle trains on,
and reproducibility from the seed.

Runs use 20 train images of 48x64 (a 3x4 grid of 16-px cells), 4 of them initially labelled,
supervised training of 2 steps per cycle, and no augmentation geometry, so every training label
seen by the trainer can be compared with the dataset's ground truth."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import s4al.active.cycle as cycle_module
from conftest import initial_images, tiny_config
from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import Ledger
from s4al.active.phases import CyclePhases
from s4al.acquisition.regions import cell_box, grid_shape
from s4al.data.views import rasterize
from s4al.train.checkpoint import load_trained_model
from s4al.train.trainer import Trainer

CPU = torch.device("cpu")
H, W, S, K = 48, 64, 16, 2  # image size, cell size, cells per pool image per cycle
PIXELS, CELL = H * W, S * S
NUM_TRAIN, NUM_INITIAL = 20, 4
NUM_POOL = NUM_TRAIN - NUM_INITIAL


def cycle_config(**sections):
    """tiny_config for whole runs: 2 cycles, 2 supervised steps each, identity augmentation."""
    base = {
        "train": {"epochs": 1, "iters_per_epoch": 2, "scale_range": [1.0, 1.0], "hflip_p": 0.0,
                  "color_jitter_p": 0.0, "device": "cpu"},
        "ssl": {"enabled": False},
        "active": {"cycles": 2, "final_cycle_epoch_multiplier": 1.0, "metric": "entropy"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return tiny_config(**base)


def recording_trainer(log: dict):
    """A Trainer that records, per cycle, the TrainData it was given and every labelled batch's labels."""

    class RecordingTrainer(Trainer):
        def fit(self):
            log[self.cycle] = {
                "labelled": list(self.streams.labelled),  # the images the supervised loss draws from
                "pool": list(self.data.pool),
                "annotations": {i: [(tuple(box), patch.copy()) for box, patch in v]
                                for i, v in self.data.annotations.items()},
                "labels": [],
            }
            return super().fit()

        def train_step(self, step, labelled, *unlabelled_and_replay):
            log[self.cycle]["labels"].extend(labelled["label"].clone())
            return super().train_step(step, labelled, *unlabelled_and_replay)

    return RecordingTrainer


def run_recorded(run_dir: Path, cfg) -> tuple[ActiveLearningRun, dict]:
    log: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cycle_module, "Trainer", recording_trainer(log))
        run = ActiveLearningRun(run_dir, cfg)
        run.run()
    return run, log


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith("_seconds")}
    return value


def ledger_snapshot(run_dir: Path) -> dict:
    """Everything a run decided, apart from timestamps and timings: regions, label PNG contents,
    image states, cycle phases and metrics, and the per-cycle summary files."""
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger, CyclePhases(ledger) as phases:
        last = phases.last_cycle()
        snapshot = {
            "regions": [(r.region_id, r.image_id, r.box, r.cycle, r.metric, r.score, r.state, r.answered_by)
                        for r in ledger.regions()],
            "labels": {r.region_id: ledger.patch(r).tolist() for r in ledger.answered()},
            "images": [(r.image_id, r.height, r.width, r.initial, r.acquired_cycle) for r in ledger.images()],
            "cycles": {c: (phases.phase(c), without_timings(phases.metrics(c))) for c in range(last + 1)},
        }
    snapshot["summaries"] = {p.name: without_timings(json.loads(p.read_text()))
                             for p in sorted((run_dir / "cycles").glob("*.json"))}
    snapshot["splits"] = {p.name: p.read_text() for p in sorted((run_dir / "splits").glob("*.txt"))}
    return snapshot


def read_ids(path: Path) -> list[str]:
    return path.read_text().split()


def histogram(labels, names) -> dict[str, int]:
    counts = np.zeros(256, dtype=np.int64)
    for label in labels:
        counts += np.bincount(np.asarray(label).ravel(), minlength=256)
    return {**{name: int(counts[k]) for k, name in enumerate(names)}, "void": int(counts[len(names):].sum())}


def crop(label: np.ndarray, box) -> np.ndarray:
    y0, x0, y1, x1 = box
    return label[y0:y1, x0:x1]


def entropy_by_hand(run: ActiveLearningRun, cycle: int, index: int) -> np.ndarray:
    """(H, W) softmax entropy of cycle `cycle`'s teacher on train image `index`, in float64 numpy."""
    model, _ = load_trained_model(run.run_dir / "checkpoints" / f"cycle_{cycle}.pt", "teacher", CPU)
    image = torch.from_numpy(run.train_set.load_image(index)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        p = model(image)[0].double().softmax(0).numpy()
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(0)


def cells_scored_for(run: ActiveLearningRun, cycle: int) -> dict[int, np.ndarray]:
    """Each pool image's (rows, cols) mean entropy over the cell's pixels not bought in earlier
    cycles (-inf where none is left), cell by cell, under cycle `cycle`'s teacher."""
    cells = {}
    for image_id in read_ids(run.run_dir / "splits" / "pool.txt"):
        index = run.index_of[image_id]
        entropy = entropy_by_hand(run, cycle, index)
        bought = np.zeros((H, W), bool)
        for region in run.ledger.regions():
            if region.image_id == image_id and region.cycle < cycle:
                y0, x0, y1, x1 = region.box
                bought[y0:y1, x0:x1] = True
        grid = np.full((H // S, W // S), -np.inf)
        for row, col in np.ndindex(grid.shape):
            window = np.s_[row * S:(row + 1) * S, col * S:(col + 1) * S]
            if (~bought[window]).any():
                grid[row, col] = entropy[window][~bought[window]].mean()
        cells[index] = grid
    return cells


# ---- shared runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    """Per-image top-k (k=2) entropy regions, SSL off, 2 cycles of buying."""
    return run_recorded(tmp_path_factory.mktemp("region") / "run", cycle_config())


@pytest.fixture(scope="module")
def global_run(tmp_path_factory):
    cfg = cycle_config(active={"selection": "global", "global_budget": 5})
    return run_recorded(tmp_path_factory.mktemp("global") / "run", cfg)


# ---- the initial split and the accounting -----------------------------------------------------
def test_initial_split_files(region_run):
    run, _ = region_run
    initial = read_ids(run.run_dir / "splits" / "initial_labelled.txt")
    pool = read_ids(run.run_dir / "splits" / "pool.txt")
    assert len(initial) == NUM_INITIAL and len(pool) == NUM_POOL
    assert sorted(initial + pool) == sorted(run.ids) and not set(initial) & set(pool)
    assert initial_images(run.ledger) == initial
    assert [r.image_id for r in run.ledger.images() if r.fully_labelled] == initial


def test_labelled_fraction_and_per_cycle_files(region_run):
    run, _ = region_run
    names = list(run.train_set.classes.names)
    summaries = run.summaries()
    assert [s["cycle"] for s in summaries] == [0, 1, 2]
    for cycle, summary in enumerate(summaries):
        assert summary == json.loads((run.run_dir / "cycles" / f"cycle_{cycle}.json").read_text())
        # trained with the initial images plus K cells of every pool image per earlier cycle
        pixels = NUM_INITIAL * PIXELS + cycle * K * NUM_POOL * CELL
        assert summary["labelled_pixels"] == pixels
        assert summary["labelled_fraction"] == pytest.approx(pixels / (NUM_TRAIN * PIXELS))
        # val scores: those of the cycle's last evaluation, every class named
        assert set(summary["val"]["iou"]) == set(names)
        assert 0.0 <= summary["val"]["miou"] <= 1.0
        assert summary["val"] == without_timings(run.phases.metrics(cycle))["val"]
        bought = run.ledger.answered(cycle)
        assert summary["bought"]["regions"] == len(bought) == (K * NUM_POOL if cycle < 2 else 0)
        assert summary["bought"]["images"] == 0
        truth = [crop(run.train_set.load(run.index_of[r.image_id]).label, r.box) for r in bought]
        assert summary["bought"]["class_pixels"] == histogram(truth, names)
        assert sum(summary["bought"]["class_pixels"].values()) == len(bought) * CELL
    evaluations = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    for cycle, summary in enumerate(summaries):
        last = [e for e in evaluations if e["cycle"] == cycle][-1]
        assert summary["val"]["miou"] == last["miou"] and summary["val"]["iou"] == last["iou"]
    assert [run.phases.phase(c) for c in range(3)] == ["done"] * 3


def test_label_pngs_hold_the_ground_truth_of_each_bought_cell(region_run):
    run, _ = region_run
    assert not run.ledger.asked()
    for region in run.ledger.regions():
        assert region.answered_by == "oracle"
        assert (run.run_dir / region.label_path).is_file()
        truth = crop(run.train_set.load(run.index_of[region.image_id]).label, region.box)
        assert np.array_equal(run.ledger.patch(region), truth)


# ---- what each acquisition mode buys ----------------------------------------------------------
def test_per_image_top_k_buys_k_new_cells_per_pool_image_per_cycle(region_run):
    run, _ = region_run
    pool = read_ids(run.run_dir / "splits" / "pool.txt")
    rows, cols = grid_shape(H, W, S)
    grid = {cell_box(r, c, H, W, S) for r in range(rows) for c in range(cols)}
    for cycle in (0, 1):
        regions = run.ledger.regions(cycle)
        assert Counter(r.image_id for r in regions) == {image_id: K for image_id in pool}
        assert all(r.box in grid and r.metric == "entropy" for r in regions)
        assert_the_k_best_cells_not_asked_before(run, cycle)
    everything = [(r.image_id, r.box) for r in run.ledger.regions()]
    assert len(everything) == len(set(everything)) == 2 * K * NUM_POOL


def assert_the_k_best_cells_not_asked_before(run: ActiveLearningRun, cycle: int) -> None:
    """Each region asked in `cycle` is among its image's K best cells under the cycle's model, with its
    score, where a cell asked in an earlier cycle, whatever became of it, scores -inf (cells_scored_for)."""
    cells = cells_scored_for(run, cycle)
    for region in run.ledger.regions(cycle):
        scores = cells[run.index_of[region.image_id]]
        y0, x0, _, _ = region.box
        assert region.score == pytest.approx(scores[y0 // S, x0 // S], rel=1e-4)
        assert region.score >= np.sort(scores.ravel())[-K] - 1e-5


class SkipsOrLeavesWaiting:
    """Answers cycle 0's first region of each image by the ground truth, skips every other one of the
    rest and leaves the others waiting; answers every region of the later cycles."""

    def __init__(self, oracle):
        self.oracle = oracle

    def answer(self, ledger, regions):
        if regions[0].cycle > 0:
            return self.oracle.answer(ledger, regions)
        first = {}
        for region in regions:
            first.setdefault(region.image_id, region)
        rest = [region for region in regions if first[region.image_id] is not region]
        ledger.skip([region.region_id for region in rest[::2]], by="alice")
        return self.oracle.answer(ledger, list(first.values()))


def test_skipped_and_still_waiting_regions_are_never_asked_again(tmp_path):
    run = ActiveLearningRun(tmp_path / "run", cycle_config())
    run.annotator = SkipsOrLeavesWaiting(run.annotator)
    run.run()
    half = NUM_POOL // 2
    assert Counter(r.state for r in run.ledger.regions(0)) == {"answered": NUM_POOL, "skipped": half, "asked": half}
    assert len(run.ledger.regions(1)) == K * NUM_POOL
    assert_the_k_best_cells_not_asked_before(run, 1)
    assert run.summaries()[1]["labelled_pixels"] == NUM_INITIAL * PIXELS + NUM_POOL * CELL  # answered cells only


def test_global_budget_buys_exactly_n_cells_the_best_of_the_pool(global_run):
    run, _ = global_run
    for cycle in (0, 1):
        regions = run.ledger.regions(cycle)
        assert len(regions) == 5
        cells = cells_scored_for(run, cycle)
        chosen = {(run.index_of[r.image_id], r.box[0] // S, r.box[1] // S) for r in regions}
        others = [v for i, grid in cells.items() for (row, col), v in np.ndenumerate(grid)
                  if (i, row, col) not in chosen and v > -np.inf]
        assert min(r.score for r in regions) >= max(others) - 1e-4
    everything = [(r.image_id, r.box) for r in run.ledger.regions()]
    assert len(set(everything)) == 10
    fractions = [s["labelled_fraction"] for s in run.summaries()]
    assert fractions == pytest.approx([(NUM_INITIAL * PIXELS + c * 5 * CELL) / (NUM_TRAIN * PIXELS) for c in range(3)])
    assert [s["bought"]["regions"] for s in run.summaries()] == [5, 5, 0]


@pytest.mark.parametrize("metric", ["random", "entropy", "coreset"])
def test_image_level_baselines_buy_whole_images_at_the_region_pixel_budget(tmp_path, metric):
    cfg = cycle_config(active={"level": "image", "metric": metric})
    run, log = run_recorded(tmp_path / "run", cfg)
    # the region protocol buys K cells of each of the 16 pool images per cycle: 32 x 256 px = 2.67 images
    per_cycle = round(K * NUM_POOL * CELL / PIXELS)
    assert per_cycle == 3
    assert not run.ledger.regions()
    initial = {run.index_of[i] for i in initial_images(run.ledger)}
    acquired = {c: {run.index_of[r.image_id] for r in run.ledger.images() if r.acquired_cycle == c} for c in (0, 1)}
    assert [len(acquired[0]), len(acquired[1])] == [per_cycle, per_cycle]
    assert not (acquired[0] & acquired[1]) and not (initial & (acquired[0] | acquired[1]))
    # bought images are fully labelled in the next cycle's training data, and leave the pool
    expected = {0: initial, 1: initial | acquired[0], 2: initial | acquired[0] | acquired[1]}
    for cycle, labelled in expected.items():
        assert log[cycle]["labelled"] == sorted(labelled)
        assert log[cycle]["pool"] == sorted(set(range(NUM_TRAIN)) - labelled)
        assert log[cycle]["annotations"] == {}
        truths = [torch.from_numpy(run.train_set.load(i).label).long() for i in labelled]
        assert all(any(torch.equal(seen, t) for t in truths) for seen in log[cycle]["labels"])
    summaries = run.summaries()
    names = list(run.train_set.classes.names)
    assert [s["labelled_fraction"] for s in summaries] == pytest.approx([0.2, 0.35, 0.5])
    for cycle in (0, 1):
        assert summaries[cycle]["bought"]["images"] == per_cycle and summaries[cycle]["bought"]["regions"] == 0
        truth = [run.train_set.load(i).label for i in acquired[cycle]]
        assert summaries[cycle]["bought"]["class_pixels"] == histogram(truth, names)
    if metric == "entropy":  # the highest mean pixel entropy under each cycle's model
        pool = sorted(set(range(NUM_TRAIN)) - initial)
        scores = {i: entropy_by_hand(run, 0, i).mean() for i in pool}
        assert acquired[0] == set(sorted(pool, key=lambda i: -scores[i])[:per_cycle])


@pytest.mark.parametrize("level", ["region", "image"])
def test_pool_scoring_says_the_images_scored_batch_by_batch(tmp_path, level):
    events = []
    cfg = cycle_config(active={"level": level, "score_batch_size": 5})
    with ActiveLearningRun(tmp_path / "run", cfg, progress=events.append) as run:
        run.run()
    scored = [(e["cycle"], e["images"], e["total"]) for e in events if e["event"] == "score"]
    pool_of_cycle_1, done_in_cycle_1 = (16, [5, 10, 15, 16]) if level == "region" else (13, [5, 10, 13])  # 3 bought
    assert scored == [(0, done, NUM_POOL) for done in (5, 10, 15, 16)] + [
        (1, done, pool_of_cycle_1) for done in done_in_cycle_1]


# ---- what the trainer is given ----------------------------------------------------------------
def test_ssl_off_trains_on_partially_labelled_pool_images_with_ignore_outside_the_cells(region_run):
    run, log = region_run
    initial = sorted(run.index_of[i] for i in initial_images(run.ledger))
    pool = sorted(set(range(NUM_TRAIN)) - set(initial))
    assert log[0]["labelled"] == initial and log[0]["annotations"] == {}
    boxes = {i: sorted(r.box for r in run.ledger.regions(0) if run.index_of[r.image_id] == i) for i in pool}
    assert log[1]["labelled"] == sorted(initial + pool)  # every pool image got K cells in cycle 0
    assert {i: sorted(b for b, _ in v) for i, v in log[1]["annotations"].items()} == boxes
    full = {i: torch.from_numpy(run.train_set.load(i).label).long() for i in range(NUM_TRAIN)}
    partial = {i: torch.from_numpy(rasterize(log[1]["annotations"][i], H, W)[0]).long() for i in pool}
    for i in pool:  # 255 everywhere but the bought cells, the ground truth inside them
        inside = torch.from_numpy(rasterize(log[1]["annotations"][i], H, W)[1]).bool()
        assert (partial[i][~inside] == 255).all() and torch.equal(partial[i][inside], full[i][inside])
        assert inside.sum() == K * CELL
    assert all(any(torch.equal(seen, full[i]) for i in initial) for seen in log[0]["labels"])
    seen_partial = 0
    for seen in log[1]["labels"]:
        matches_partial = any(torch.equal(seen, partial[i]) for i in pool)
        assert matches_partial or any(torch.equal(seen, full[i]) for i in initial)
        seen_partial += matches_partial
    assert seen_partial > 0


@pytest.mark.parametrize("enabled", [True, False])
def test_partially_labelled_images_stay_in_the_pool_and_join_the_labelled_stream_only_without_ssl(
    tmp_path, enabled
):
    run = ActiveLearningRun(tmp_path / "run", cycle_config(ssl={"enabled": enabled}))
    initial = sorted(run.index_of[i] for i in initial_images(run.ledger))
    target = next(i for i in range(NUM_TRAIN) if i not in initial)
    run.ledger.ask(0, [(run.ids[target], (16, 16, 32, 32), "entropy", 1.0)])
    run.annotator.answer(run.ledger, run.ledger.asked())
    data = run.train_data(run.label_state())
    assert data.pool == sorted(set(range(NUM_TRAIN)) - set(initial)) and data.labelled == initial
    assert data.streams(ssl=enabled).labelled == (initial if enabled else sorted(initial + [target]))
    [(box, patch)] = data.annotations[target]
    assert box == (16, 16, 32, 32)
    assert np.array_equal(patch, crop(run.train_set.load(target).label, box))


class Killed(Exception):
    pass


@pytest.mark.parametrize("interrupted_at", ["summary", "done"])
def test_a_run_interrupted_while_finishing_still_ends_with_its_final_summary(tmp_path, interrupted_at):
    cfg = cycle_config(active={"cycles": 0})
    set_phase = CyclePhases.set_phase

    def dies_at_done(phases, cycle, phase, metrics=None):
        if phase == "done":
            raise Killed
        return set_phase(phases, cycle, phase, metrics)

    def dies_writing(run, cycle):
        raise Killed

    with pytest.MonkeyPatch.context() as mp:
        if interrupted_at == "done":
            mp.setattr(CyclePhases, "set_phase", dies_at_done)
        else:
            mp.setattr(ActiveLearningRun, "_write_summary", dies_writing)
        with pytest.raises(Killed):
            ActiveLearningRun(tmp_path, cfg).run()
    resumed = ActiveLearningRun(tmp_path)  # what `s4al run --resume` does
    assert resumed.phases.phase(0) == "train"
    assert [s["cycle"] for s in resumed.run()] == [0]
    assert resumed.phases.phase(0) == "done"


# ---- reproducibility --------------------------------------------------------------------------
def test_same_seed_same_split_and_queries_other_seed_other_split(region_run, tmp_path):
    run, _ = region_run
    again = ActiveLearningRun(tmp_path / "again", cycle_config())
    again.run()
    first, second = ledger_snapshot(run.run_dir), ledger_snapshot(again.run_dir)
    assert first["regions"] and first == second  # same split, same regions and scores, same labels
    other_cfg = cycle_config().model_copy(update={"seed": run.cfg.seed + 1})
    other = ActiveLearningRun(tmp_path / "other", other_cfg)
    initial = (run.run_dir / "splits" / "initial_labelled.txt").read_text()
    assert (other.run_dir / "splits" / "initial_labelled.txt").read_text() != initial
