"""A run's cycles as one CSV row each (report/cycles.csv): the numbers of the cycle summaries
(cycles/cycle_C.json) a plot or a comparison of runs needs, unformatted: fractions in 0..1,
seconds, pixel counts; a cycle still asking has its model's numbers and no purchase yet."""

from __future__ import annotations

import csv
from pathlib import Path

CSV_FILE = "cycles.csv"


def cycle_columns(cycles: list[dict]) -> list[str]:
    """The header: the cycle's labels, scores and purchase, then each class's IoU; test scores
    only when a cycle was tested (dataset.test_split)."""
    splits = ["val"] + (["test"] if any("test" in c for c in cycles) else [])
    names = list(cycles[0]["val"]["iou"]) if cycles else []
    return (["cycle", "labelled_fraction", "labelled_pixels"]
            + [f"{split}_{key}" for split in splits for key in ("miou", "pixel_accuracy")]
            + ["regions_bought", "skipped_regions", "images_bought", "pixels_bought", "train_seconds",
               "acquire_seconds", "epochs", "processes"]
            + [f"{split}_iou_{name}" for split in splits for name in names])


def cycle_row(cycle: dict) -> dict:
    """One summary's values by column name; a score the cycle lacks (an absent class's IoU), or the
    purchase of a cycle still asking, is empty."""
    bought = cycle.get("bought")
    row = {"cycle": cycle["cycle"], "labelled_fraction": cycle["labelled_fraction"],
           "labelled_pixels": cycle["labelled_pixels"], "train_seconds": cycle.get("train_seconds"),
           "acquire_seconds": cycle.get("acquire_seconds"), "epochs": cycle.get("epochs"),
           "processes": cycle.get("processes")}  # train.batch_size is per process
    if bought is not None:
        row |= {"regions_bought": bought["regions"], "skipped_regions": bought.get("skipped_regions"),
                "images_bought": bought["images"], "pixels_bought": sum(bought["class_pixels"].values())}
    for split in ("val", "test"):
        scores = cycle.get(split)
        if scores is not None:
            row |= {f"{split}_miou": scores["miou"], f"{split}_pixel_accuracy": scores["pixel_accuracy"]}
            row |= {f"{split}_iou_{name}": iou for name, iou in scores["iou"].items()}
    return row


def csv_row(cycle: dict) -> dict:
    """cycle_row as a CSV writes it: a value the cycle lacks is an empty cell."""
    return {key: "" if value is None else value for key, value in cycle_row(cycle).items()}


def write_cycles_csv(cycles: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=cycle_columns(cycles), restval="")
        writer.writeheader()
        writer.writerows(map(csv_row, cycles))
    return path
