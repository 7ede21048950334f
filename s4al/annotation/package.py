"""The query package: what an annotator needs to answer the regions the ledger has asked for.

OUT_DIR/
  tasks.json             Label Studio tasks to import, one per image (see label_studio.py)
  labelling_config.xml   the Label Studio labelling config of the project
  images/IMAGE_ID.png    each image as the model saw it (lossless), for any other painting tool
  overlays/IMAGE_ID.png  the same with the asked regions outlined
  manifest.json, .csv    one entry per asked region: image, region id, box (y0, x0, y1, x1; half-open
                         pixels), score, and the classes the model predicts inside the box (pixels)

The pre-annotations and the predicted classes come from the latest checkpoint that asked.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from s4al.active.cycle import ActiveLearningRun
from s4al.active.ledger import RUN_ID, Region
from s4al.annotation.label_studio import ASKED_COLOUR, labelling_config, task
from s4al.atomic import atomic_write, output_folder
from s4al.data.classes import ClassSet
from s4al.inference import inference_batches
from s4al.tiles import tiled_labels
from s4al.train.checkpoint import load_trained_model

OUTLINE_WIDTH = 2  # pixels, drawn just outside each box so the box itself stays visible
CSV_COLUMNS = ("image_id", "region_id", "cycle", "y0", "x0", "y1", "x1", "metric", "score", "predicted",
               "image", "overlay")


@dataclass(frozen=True)
class QueryPackage:
    out_dir: Path
    regions: int
    images: int


def write_query_package(active_run: ActiveLearningRun, out_dir: Path) -> QueryPackage:
    """Writes the package of every region still asked in the run into `out_dir` (files of an
    earlier package there are overwritten, its images no longer asked removed); the run's device
    pre-annotates."""
    by_image: dict[str, list[Region]] = defaultdict(list)
    for region in active_run.ledger.asked():
        by_image[region.image_id].append(region)
    out_dir = output_folder(Path(out_dir))
    for folder in ("images", "overlays"):
        output_folder(out_dir / folder)
    classes = active_run.train_set.classes
    with atomic_write(out_dir / "labelling_config.xml", "w") as file:
        file.write(labelling_config(classes))
    entries = []
    with atomic_write(out_dir / "tasks.json", "w") as tasks:  # an interrupted query leaves the earlier file whole
        tasks.write("[")
        for number, (image, prediction, regions) in enumerate(_predictions(active_run, by_image, active_run.device)):
            image_id = regions[0].image_id
            Image.fromarray(image).save(out_dir / "images" / f"{image_id}.png")
            _overlay(image, regions).save(out_dir / "overlays" / f"{image_id}.png")
            made = task(image, regions, prediction, classes, active_run.ledger.get_meta(RUN_ID))
            tasks.write(("," if number else "") + "\n" + json.dumps(made))
            entries += [_entry(region, prediction, classes) for region in regions]
        tasks.write("\n]\n")
    entries.sort(key=lambda entry: entry["region_id"])
    _write_manifests(out_dir, entries, classes)
    _remove_earlier_images(out_dir, {record.image_id for record in active_run.ledger.images()} - set(by_image))
    return QueryPackage(out_dir, len(entries), len(by_image))


def _remove_earlier_images(out_dir: Path, not_asked: set[str]) -> None:
    """An earlier package's images of this run that nothing asks any more (answered or skipped
    since): gone, so that no one paints them; other files stay."""
    for folder in ("images", "overlays"):
        for path in (out_dir / folder).glob("*.png"):
            if path.stem in not_asked:
                path.unlink()


@torch.no_grad()
def _predictions(
    active_run: ActiveLearningRun, by_image: dict[str, list[Region]], device: torch.device
) -> Iterator[tuple[np.ndarray, np.ndarray, list[Region]]]:
    """(image (H, W, 3) uint8, predicted class ids (H, W) uint8, its asked regions) per image."""
    if not by_image:
        return
    cycle = max(region.cycle for regions in by_image.values() for region in regions)
    model, _ = load_trained_model(active_run.folder.checkpoint_path(cycle), "teacher", device)
    indices = [active_run.index_of[image_id] for image_id in by_image]
    batch_size = active_run.cfg.active.score_batch_size
    for images, _, batch_indices in inference_batches(active_run.train_set, indices, batch_size, device, 0, None, False):
        predictions = tiled_labels(model, images, device)  # a large image tile by tile
        for image, prediction, index in zip(images.permute(0, 2, 3, 1).numpy(), predictions, batch_indices):
            yield image, prediction, by_image[active_run.ids[index]]


def _overlay(image: np.ndarray, regions: list[Region]) -> Image.Image:
    overlay = Image.fromarray(image)
    draw = ImageDraw.Draw(overlay)
    for region in regions:
        y0, x0, y1, x1 = region.box
        outside = (x0 - OUTLINE_WIDTH, y0 - OUTLINE_WIDTH, x1 + OUTLINE_WIDTH - 1, y1 + OUTLINE_WIDTH - 1)
        draw.rectangle(outside, outline=ASKED_COLOUR, width=OUTLINE_WIDTH)
    return overlay


def _entry(region: Region, prediction: np.ndarray, classes: ClassSet) -> dict:
    y0, x0, y1, x1 = region.box
    counts = np.bincount(prediction[y0:y1, x0:x1].ravel(), minlength=classes.num_classes)
    predicted = {classes.names[k]: int(counts[k]) for k in np.argsort(-counts, kind="stable") if counts[k]}
    return {
        "image_id": region.image_id, "region_id": region.region_id, "cycle": region.cycle, "box": list(region.box),
        "metric": region.metric, "score": region.score, "predicted": predicted,
        "image": f"images/{region.image_id}.png", "overlay": f"overlays/{region.image_id}.png",
    }


def _write_manifests(out_dir: Path, entries: list[dict], classes: ClassSet) -> None:
    manifest = {"classes": list(classes.names), "unpainted": 255, "regions": entries}
    with atomic_write(out_dir / "manifest.json", "w") as file:
        file.write(json.dumps(manifest, indent=2))
    with atomic_write(out_dir / "manifest.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, CSV_COLUMNS)
        writer.writeheader()
        for entry in entries:
            y0, x0, y1, x1 = entry["box"]
            predicted = " ".join(f"{name}:{pixels}" for name, pixels in entry["predicted"].items())
            writer.writerow({**{k: entry[k] for k in CSV_COLUMNS if k in entry},
                             "y0": y0, "x0": x0, "y1": y1, "x1": x1, "predicted": predicted})
