"""How the annotation commands scale with a run's pool. A run folder is made as a run leaves it
after asking (no training: a ledger of the demo preset's synthetic images, IMAGES of them in the pool
with REGIONS asked regions each, in cycle 0), then each command runs as its own process, timed whole
(wall seconds, peak memory), after the start-up every command pays (`s4al --help`):

- `s4al import RUN masks/`: a folder of one class-id PNG per image answering every region;
- the same folder imported again (every mask left alone: each region compared with its answer);
- `s4al import RUN export.json`: a Label Studio JSON export, in a second such folder, its tasks as
  `s4al query` writes them (image, rectangles, one brush per class, the model's paint) and answered;
- the same export imported again (as a project's full export is after every cycle: its tasks are
  those imported before, unchanged);
- `s4al status RUN` (which also reads the dataset's images, to say what was added or lost);
- reading what a cycle trains with: LabelState.read and every answered patch (`answers`);
- `s4al skip RUN`: every region of a third such folder, none answered.

    .venv/bin/python benchmarks/annotation_scale.py            # 5,000 images, 12 regions each
    .venv/bin/python benchmarks/annotation_scale.py --images 100 --export-images 20 --out /tmp/scale

Writes results/annotation_scale/<machine-tag>.{json,md}. Time it alone: a second process on the
machine slows both."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import REPO, RESULTS, machine_info, machine_tag, markdown_table, write_json
from s4al.active.ledger import CLASSES_META, Ledger
from s4al.active.phases import CyclePhases
from s4al.annotation.label_studio import task
from s4al.config import load_config
from s4al.data import build_dataset
from s4al.data.classes import ClassSet
from s4al.run_folder import RunFolder

S4AL = [sys.executable, "-m", "s4al.cli"]
CLASSES = ClassSet(names=tuple(f"class {k}" for k in range(11)),
                   colors=tuple((20 * k, 255 - 20 * k, 7 * k) for k in range(11)))
READ_LABELS = """
import sys
from s4al.active.label_state import LabelState
from s4al.active.ledger import Ledger
with Ledger(sys.argv[1], readonly=True) as ledger:
    state = LabelState.read(ledger, {r.image_id: i for i, r in enumerate(ledger.images())})
    print(sum(len(patches) for patches in state.answers.values()))
"""


def make_run(run_dir: Path, images: int, regions: int, size: tuple[int, int], cell: int) -> dict[str, list]:
    """A run folder waiting for the answers of cycle 0: config, ledger, phases. Returns each image's
    asked boxes: `regions` cells of `cell` pixels per image, spread over its grid."""
    height, width = size
    cfg = load_config("demo", {"dataset": {"synthetic": {"num_train": images, "height": height, "width": width}},
                               "active": {"region_size": cell, "regions_per_image": regions, "annotator": "external"}})
    dataset = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)  # the run's images, as status reads them
    run_dir.mkdir(parents=True)
    RunFolder(run_dir).save_config(cfg)
    grid = [(y, x) for y in range(0, height - cell + 1, cell) for x in range(0, width - cell + 1, cell)]
    rng = np.random.default_rng(0)
    boxes = {dataset.image_id(n): [(y, x, y + cell, x + cell) for y, x in (grid[i] for i in
                                                                           sorted(rng.choice(len(grid), regions, False)))]
             for n in range(images)}
    with Ledger(run_dir / "ledger.sqlite") as ledger, CyclePhases(ledger) as phases:
        ledger.register_images([(image_id, height, width) for image_id in boxes])
        ledger.set_meta(CLASSES_META, list(CLASSES.names))
        phases.set_phase(0, "train")
        ledger.ask(0, [(image_id, box, "entropy", 1.0) for image_id, image_boxes in boxes.items()
                       for box in image_boxes])
        phases.set_phase(0, "acquire", {"labelled_fraction": 0.0, "val": {"miou": 0.5}})
        phases.set_phase(0, "answer")
    return boxes


def painting(image_id: str, size: tuple[int, int]) -> np.ndarray:
    """A full-image class map of blocks of a few classes, as a person's (or a model's) paint."""
    rng = np.random.default_rng(int(image_id.rsplit("_", 1)[1]))
    blocks = rng.integers(0, 4, (size[0] // 30 + 1, size[1] // 30 + 1), dtype=np.uint8)
    return np.kron(blocks, np.ones((30, 30), np.uint8))[:size[0], :size[1]]


def write_masks(folder: Path, boxes: dict[str, list], size: tuple[int, int]) -> None:
    folder.mkdir(parents=True)
    for image_id in boxes:
        Image.fromarray(painting(image_id, size)).save(folder / f"{image_id}.png")


def write_export(path: Path, run_dir: Path, boxes: dict[str, list], size: tuple[int, int]) -> None:
    """The JSON export of a project holding the tasks of `boxes`' images, each submitted with the
    model's paint accepted (its prediction's results as the annotation), written one task at a time."""
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        regions = ledger.regions()
    by_image: dict[str, list] = {}
    for region in regions:
        by_image.setdefault(region.image_id, []).append(region)
    rng = np.random.default_rng(1)
    with path.open("w") as file:
        file.write("[")
        for number, image_id in enumerate(by_image):
            image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            made = task(image, by_image[image_id], painting(image_id, size), CLASSES)
            result = made.pop("predictions")[0]["result"]
            made.update(id=number + 1, annotations=[{"id": number + 1, "result": result, "was_cancelled": False,
                                                     "updated_at": "2026-01-01T00:00:00Z"}])
            file.write(("," if number else "") + json.dumps(made))
        file.write("]")


def timed(command: list[str]) -> dict:
    """Wall seconds and peak memory (max RSS, MiB) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command)} failed:\n{output}")
    return {"seconds": round(seconds, 2), "peak_mib": round(usage.ru_maxrss / 1024), "output_tail": output[-1000:]}


def measure(work: Path, images: int, export_images: int, regions: int, size: tuple[int, int], cell: int) -> dict:
    masks_run, export_run, skip_run = work / "masks_run", work / "export_run", work / "skip_run"
    boxes = make_run(masks_run, images, regions, size, cell)
    write_masks(work / "masks", boxes, size)
    export_boxes = make_run(export_run, export_images, regions, size, cell)
    write_export(work / "export.json", export_run, export_boxes, size)
    make_run(skip_run, images, regions, size, cell)
    steps = {
        "start_up": [*S4AL, "--help"],  # the interpreter, torch and the CLI: part of every step below
        "import_masks": [*S4AL, "import", str(masks_run), str(work / "masks")],
        "import_masks_again": [*S4AL, "import", str(masks_run), str(work / "masks")],
        "import_export": [*S4AL, "import", str(export_run), str(work / "export.json")],
        "import_export_again": [*S4AL, "import", str(export_run), str(work / "export.json")],
        "status": [*S4AL, "status", str(masks_run)],
        "read_labels": [sys.executable, "-c", READ_LABELS, str(masks_run / "ledger.sqlite")],
        "skip_all": [*S4AL, "skip", str(skip_run)],
    }
    results = {name: timed(command) for name, command in steps.items()}
    results["import_export"]["export_mib"] = round((work / "export.json").stat().st_size / 2**20)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="pool images of the mask-folder and skip runs")
    parser.add_argument("--export-images", type=int, default=1000, help="pool images of the Label Studio run")
    parser.add_argument("--regions", type=int, default=12, help="asked regions per image")
    parser.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--cell", type=int, default=30, help="region side in pixels")
    parser.add_argument("--out", type=Path, default=RESULTS / "annotation_scale")
    args = parser.parse_args(argv)
    size = tuple(args.size)
    with tempfile.TemporaryDirectory(prefix="s4al_scale_") as work:
        results = measure(Path(work), args.images, args.export_images, args.regions, size, args.cell)
    info = machine_info()
    setup = {"images": args.images, "export_images": args.export_images, "regions_per_image": args.regions,
             "size": list(size), "cell": args.cell, "classes": len(CLASSES.names)}
    record = {"command": " ".join(["benchmarks/annotation_scale.py", *(argv if argv is not None else sys.argv[1:])]),
              "setup": setup, "machine": info, "results": results}
    tag = machine_tag(info, "cpu")
    write_json(args.out / f"{tag}.json", record)
    rows = [[name, f"{r['seconds']:.1f}", str(r["peak_mib"])] for name, r in results.items()]
    (args.out / f"{tag}.md").write_text(
        f"# Annotation commands at scale: {tag}\n\n`{record['command']}`: {args.images} images "
        f"({args.export_images} in the Label Studio export), {args.regions} regions of {args.cell}x{args.cell} "
        f"each, {size[0]}x{size[1]} images.\n\n" + markdown_table(["step", "seconds", "peak MiB"], rows) + "\n")
    print((args.out / f"{tag}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
