"""The query package: what an annotator needs to answer the regions the ledger has asked for.

OUT_DIR/
  tasks.json             Label Studio tasks to import, one per image (see label_studio.py)
  labelling_config.xml   the Label Studio labelling config of the project
  images/IMAGE_ID.png    each image as the model saw it (lossless), for any other painting tool
  overlays/IMAGE_ID.png  the same with the asked regions outlined
  manifest.json, .csv    one entry per asked region: image, region id, box (y0, x0, y1, x1; half-open
                         pixels), score, and the classes the model predicts inside the box (pixels)
  .s4al-query-package.json  the files the package wrote, each with its SHA-256

The pre-annotations and the predicted classes come from the latest checkpoint that asked. A later
package into the same folder overwrites or removes only files that the record lists and that are as
written; a folder without the record must hold none of the names a package writes (in the run's own
queries/, an older s4al's package of its images is taken as the package's), and a folder in the
dataset's, outside the run folder, is refused.
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
from s4al.atomic import atomic_write, output_folder, stray_temp_files
from s4al.config import file_digest
from s4al.data.classes import ClassSet
from s4al.errors import S4alError
from s4al.inference import inference_batches
from s4al.text import first_of
from s4al.tiles import tiled_labels
from s4al.train.checkpoint import load_trained_model

OUTLINE_WIDTH = 2  # pixels, drawn just outside each box so the box itself stays visible
CSV_COLUMNS = ("image_id", "region_id", "cycle", "y0", "x0", "y1", "x1", "metric", "score", "predicted",
               "image", "overlay")
RECORD_NAME = ".s4al-query-package.json"
FIXED_FILES = ("labelling_config.xml", "tasks.json", "manifest.json", "manifest.csv")
IMAGE_FOLDERS = ("images", "overlays")


class PackageError(S4alError):
    """A refused package folder; nothing was written to it. The message names the folder or file
    and the problem."""


@dataclass(frozen=True)
class QueryPackage:
    out_dir: Path
    regions: int
    images: int


def write_query_package(active_run: ActiveLearningRun, out_dir: Path) -> QueryPackage:
    """Writes the package of every region still asked in the run into `out_dir` (files an earlier
    package wrote there are overwritten, its images no longer asked removed; PackageRecord); the
    run's device pre-annotates."""
    by_image: dict[str, list[Region]] = defaultdict(list)
    for region in active_run.ledger.asked():
        by_image[region.image_id].append(region)
    out_dir = Path(out_dir)
    record = package_record(out_dir, active_run)
    output_folder(out_dir)
    record.claim([*FIXED_FILES, *(_image_file(folder, image_id) for image_id in by_image for folder in IMAGE_FOLDERS)])
    for folder in IMAGE_FOLDERS:
        output_folder(out_dir / folder)
    _remove_stray_temp_files(out_dir)
    classes = active_run.train_set.classes
    with atomic_write(out_dir / "labelling_config.xml", "w") as file:
        file.write(labelling_config(classes))
    entries = []
    with atomic_write(out_dir / "tasks.json", "w") as tasks:  # an interrupted query leaves the earlier file whole
        tasks.write("[")
        for number, (image, prediction, regions) in enumerate(_predictions(active_run, by_image, active_run.device)):
            image_id = regions[0].image_id
            Image.fromarray(image).save(out_dir / _image_file("images", image_id))
            _overlay(image, regions).save(out_dir / _image_file("overlays", image_id))
            made = task(image, regions, prediction, classes, active_run.ledger.get_meta(RUN_ID))
            tasks.write(("," if number else "") + "\n" + json.dumps(made))
            entries += [_entry(region, prediction, classes) for region in regions]
        tasks.write("\n]\n")
    entries.sort(key=lambda entry: entry["region_id"])
    _write_manifests(out_dir, entries, classes)
    record.finish()
    return QueryPackage(out_dir, len(entries), len(by_image))


def _image_file(folder: str, image_id: str) -> str:
    return f"{folder}/{image_id}.png"


def package_record(out_dir: Path, active_run: ActiveLearningRun) -> PackageRecord:
    """The record of the package folder `out_dir` of `active_run`, as it is (nothing written);
    PackageError where a package may not go there: a folder in the dataset's (but the run's own),
    or one holding files of a package's names that no package recorded (but in the run's queries/,
    where s4al alone writes: there its earlier packages' files are taken as the package's)."""
    if not out_dir.resolve().is_relative_to(active_run.run_dir.resolve()):
        _refuse_dataset_folder(out_dir, active_run.cfg.dataset.root)
    in_queries = out_dir.resolve().is_relative_to(active_run.folder.queries_dir.resolve())
    return PackageRecord(out_dir, {r.image_id for r in active_run.ledger.images()} if in_queries else None)


def _remove_stray_temp_files(out_dir: Path) -> None:
    """Those of the package's own files that a query killed as it wrote them left behind (a copy of
    tasks.json may be hundreds of MB); the run's lock makes this query their one writer."""
    strays = [*(stray for name in FIXED_FILES for stray in stray_temp_files(out_dir, name)),
              *(stray for folder in IMAGE_FOLDERS for stray in stray_temp_files(out_dir / folder, "*.png"))]
    for stray in strays:
        stray.unlink(missing_ok=True)


def _refuse_dataset_folder(out_dir: Path, dataset_root: Path | None) -> None:
    """A package in the dataset's folder would mix its images with the dataset's own."""
    if dataset_root is None:
        return
    root = Path(dataset_root).resolve()
    for folder in (out_dir, *(out_dir / name for name in IMAGE_FOLDERS)):
        if folder.resolve().is_relative_to(root):
            raise PackageError(f"{out_dir}: the dataset folder {root} or a folder in it, where a query package "
                               "could overwrite or remove the dataset's own files; give --out a folder outside it")


class PackageRecord:
    """The files a query package wrote into its folder (names relative to it), each with the SHA-256
    of its content as written; a name claimed but not written yet (a query stopped part-way) has
    none, and a file there is the package's. Only a file the record owns is overwritten or removed."""

    def __init__(self, out_dir: Path, adopted_images: set[str] | None = None):
        self.out_dir = out_dir
        self.path = out_dir / RECORD_NAME
        self.files: dict[str, str | None] = (self._read() if self.path.exists() else
                                             self._package_names(adopted_images))
        self.claimed: list[str] = []

    def _read(self) -> dict[str, str | None]:
        try:
            files = json.loads(self.path.read_text())["files"]
            if all(isinstance(name, str) and isinstance(digest, (str, type(None))) for name, digest in files.items()):
                return files
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        raise PackageError(f"{self.path}: not a readable record of the files a query package wrote in "
                           f"{self.out_dir}, which tells them from other files; give --out a new or empty folder")

    def _package_names(self, adopted_images: set[str] | None) -> dict[str, str | None]:
        """A folder without a record holds none of the names a package writes; with
        `adopted_images` (the run's own folder, written before packages kept a record), its files of
        a package's names for those images are the package's, and the others are left alone."""
        found = [name for name in FIXED_FILES if _exists(self.out_dir / name)]
        for folder in IMAGE_FOLDERS:
            if (self.out_dir / folder).is_dir():
                found += sorted(f"{folder}/{path.name}" for path in (self.out_dir / folder).iterdir())
        if adopted_images is not None:
            names = {*FIXED_FILES, *(_image_file(folder, i) for i in adopted_images for folder in IMAGE_FOLDERS)}
            return dict.fromkeys(name for name in found if name in names)
        if found:
            raise PackageError(f"{self.out_dir}: holds {first_of(found)} but no {RECORD_NAME} (the record of the "
                               "files a query package wrote), so they may be another's, which a package would "
                               "overwrite or remove; give --out a new or empty folder (or remove them if s4al query "
                               "wrote them)")
        return {}

    def owns(self, name: str) -> bool:
        """Whether the file `name` is as the package wrote it (or one it was writing)."""
        path = self.out_dir / name
        if name not in self.files or path.is_symlink() or not path.is_file():
            return False
        return self.files[name] in (None, file_digest(path))

    def claim(self, names: list[str]) -> None:
        """Records `names` as being written, before any is: each must be free or the package's."""
        taken = [name for name in names if _exists(self.out_dir / name) and not self.owns(name)]
        if taken:
            raise PackageError(f"{self.out_dir / taken[0]}: a file no query package wrote (or changed since), which "
                               "this package would overwrite; move it away or give --out another folder")
        self.files = {name: digest for name, digest in self.files.items() if self.owns(name)}
        self.files.update(dict.fromkeys(names))
        self.claimed = list(names)
        self._save()

    def finish(self) -> None:
        """Removes the files an earlier package wrote that this one does not hold (images no longer
        asked) and records the digests of the files written."""
        for name in set(self.files) - set(self.claimed):
            if self.owns(name):
                (self.out_dir / name).unlink()
        self.files = {name: file_digest(self.out_dir / name) for name in self.claimed if (self.out_dir / name).is_file()}
        self._save()

    def _save(self) -> None:
        with atomic_write(self.path, "w") as file:
            file.write(json.dumps({"written_by": "s4al query", "files": self.files}, indent=1))


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


@torch.no_grad()
def _predictions(
    active_run: ActiveLearningRun, by_image: dict[str, list[Region]], device: torch.device
) -> Iterator[tuple[np.ndarray, np.ndarray, list[Region]]]:
    """(image (H, W, 3) uint8, predicted class ids (H, W) uint8, its asked regions) per image."""
    if not by_image:
        return
    cycle = max(region.cycle for regions in by_image.values() for region in regions)
    model, _ = load_trained_model(active_run.folder.trained_checkpoint(cycle), "teacher", device)
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
