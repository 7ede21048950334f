"""Is a run's labelled set a fair sample of the classes? Per class, the pixel share in the run's
initially labelled images (the target that `ssl.distribution_alignment` steers the pseudo labels
towards), a 90% interval of that share from resampling those images, and the share in all train
images. Consecutive video frames are alike, so the interval, which treats images as independent,
is if anything too narrow. Where the run folder holds checkpoints with an argmax aligner's state,
also the log-offsets it ended the last cycle with, and the target it estimated (with
`ssl.alignment_target: labelled_x_predicted`).

Writes OUT/<name>.json and prints one table per run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, machine_info, markdown_table, write_json
from s4al.run_folder import RunFolder
from s4al.config import load_run_config
from s4al.data import build_dataset
from s4al.data.classes import class_pixel_counts

RESAMPLES = 2000


def image_class_counts(dataset, indices: list[int], num_classes: int) -> np.ndarray:
    """(len(indices), C) labelled pixels of each class in each image."""
    return np.stack([class_pixel_counts([dataset.load_label(i)])[:num_classes] for i in indices])


def initially_labelled(run_dir: Path, dataset) -> list[int]:
    """Dataset indices of the run's initially labelled images (its splits/initial_labelled.txt)."""
    position = {dataset.image_id(i): i for i in range(len(dataset))}
    return [position[line] for line in (run_dir / "splits" / "initial_labelled.txt").read_text().split()]


def shares_interval(counts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """5% and 95% quantiles of the pooled class shares of `counts`' rows resampled with replacement."""
    rows = np.random.default_rng(seed).integers(0, len(counts), (RESAMPLES, len(counts)))
    pooled = counts[rows].sum(axis=1).astype(np.float64)
    return tuple(np.quantile(pooled / pooled.sum(axis=1, keepdims=True), [0.05, 0.95], axis=0))


def aligner_state(run_dir: Path, name: str) -> list[float] | None:
    """`name` ("bias", or "target" where it was estimated) of the aligner after the last cycle."""
    checkpoints = sorted((run_dir / "checkpoints").glob("cycle_*.pt"), key=lambda path: int(path.stem.split("_")[1]))
    if not checkpoints:
        return None
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False).get("alignment")
    return state[name].tolist() if state and name in state else None


def run_shares(run_dir: Path, data_root: Path | None) -> dict:
    cfg = load_run_config(RunFolder(run_dir).config_path, {"dataset": {"root": str(data_root)}} if data_root else None)
    train = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    names, num_classes = list(train.classes.names), train.classes.num_classes
    labelled = initially_labelled(run_dir, train)
    every = image_class_counts(train, list(range(len(train))), num_classes)
    chosen = every[labelled]
    low, high = shares_interval(chosen, cfg.seed)
    return {"run": str(run_dir), "classes": names, "labelled_images": len(labelled),
            "labelled_share": (chosen.sum(0) / chosen.sum()).tolist(), "interval_90": [low.tolist(), high.tolist()],
            "train_share": (every.sum(0) / every.sum()).tolist(), "aligner_bias": aligner_state(run_dir, "bias"),
            "aligner_target": aligner_state(run_dir, "target")}


def table(r: dict) -> str:
    rows = []
    for k, name in enumerate(r["classes"]):
        low, high, true = r["interval_90"][0][k], r["interval_90"][1][k], r["train_share"][k]
        bias = "–" if r["aligner_bias"] is None else f"{r['aligner_bias'][k]:+.2f}"
        target = "–" if r["aligner_target"] is None else f"{100 * r['aligner_target'][k]:.2f}"
        rows.append([name, f"{100 * r['labelled_share'][k]:.2f}", f"{100 * low:.2f}–{100 * high:.2f}",
                     f"{100 * true:.2f}", "yes" if low <= true <= high else "no", bias, target])
    headers = ["class", "labelled %", "90% interval", "all train %", "inside", "aligner log-offset",
               "estimated target %"]
    return f"{r['run']} ({r['labelled_images']} labelled images)\n\n" + markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (config.yaml, splits/)")
    parser.add_argument("--name", required=True, help="result file name")
    parser.add_argument("--data-root", type=Path, help="the dataset, where it is not where the run had it")
    parser.add_argument("--out", type=Path, default=RESULTS / "class_shares", help="default %(default)s")
    args = parser.parse_args(argv)
    results = [run_shares(run, args.data_root) for run in args.runs]
    write_json(args.out / f"{args.name}.json", {"runs": results, "machine": machine_info()})
    print("\n\n".join(table(r) for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
