"""Segment new images of any size with a trained checkpoint: class ids, colour masks and overlays."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from s4al.atomic import atomic_write, output_folder
from s4al.config import DatasetConfig, file_digest
from s4al.data import ClassSet, DatasetError
from s4al.data.camvid import CAMVID_CLASSES
from s4al.data.cityscapes import CITYSCAPES_CLASSES
from s4al.data.folder import read_spec
from s4al.data.io import read_image, resize_image, resize_label
from s4al.data.synthetic import SYNTHETIC_CLASSES
from s4al.distributed import setup_device
from s4al.errors import S4alError
from s4al.text import first_of
from s4al.tiles import tiled_labels
from s4al.train.checkpoint import load_checkpoint, trained_model

BUILT_IN_CLASSES = {"camvid": CAMVID_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "synthetic": SYNTHETIC_CLASSES}
OVERLAY_ALPHA = 0.5  # share of the mask colour in the overlay
OVERLAY_ROWS = 512  # blended at a time: the float copies stay small whatever the image's size


def class_set(dataset: DatasetConfig, names: list[str], colours: list[list[int]] | None = None) -> ClassSet:
    """A model's classes in the colours it was trained with: `colours` (saved in its checkpoint);
    for a checkpoint saved without them, the built-in dataset's, or those of the folder's
    classes.yaml where it is found and lists the same classes; else a qualitative colour map."""
    names = tuple(names)
    if colours is not None:
        return ClassSet(names, tuple(tuple(colour) for colour in colours))
    if dataset.name in BUILT_IN_CLASSES:
        return BUILT_IN_CLASSES[dataset.name]
    try:
        spec = read_spec(dataset.root)
        if tuple(c.name for c in spec.classes) == names:
            return ClassSet(names, tuple(c.color for c in spec.classes))
    except DatasetError:
        pass
    cmap = colormaps["tab20"]
    return ClassSet(names, tuple(tuple(int(255 * v) for v in cmap(i % cmap.N)[:3]) for i in range(len(names))))


@torch.no_grad()
def segment(model: torch.nn.Module, image: np.ndarray, device: torch.device,
            trained_at: tuple[int, int] | None = None, progress: Callable[[float], None] | None = None) -> np.ndarray:
    """(H, W) uint8 class ids of one (H, W, 3) uint8 RGB image. A model trained on images resized
    to `trained_at` (dataset.resize) sees the image resized so, as in training and evaluation, and
    its labels are scaled back to the image's size; else it runs at the image's own size. An image
    too large to run whole is segmented tile by tile (s4al/tiles.py); `progress`: called with the
    share of the tiles done after each."""
    shown = resize_image(image, trained_at) if trained_at else image
    labels = tiled_labels(model, torch.from_numpy(shown).permute(2, 0, 1).unsqueeze(0), device, progress)[0]
    return resize_label(labels, image.shape[:2])


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    out = np.empty_like(image)
    for top in range(0, image.shape[0], OVERLAY_ROWS):
        rows = slice(top, top + OVERLAY_ROWS)
        out[rows] = ((1 - alpha) * image[rows].astype(np.float32) + alpha * colours[rows].astype(np.float32)).round()
    return out


def legend(classes: ClassSet) -> Figure:
    """The key to the masks' colours: one swatch per class, with its id and name."""
    patches = [Patch(facecolor=tuple(v / 255 for v in colour), edgecolor="0.3", label=f"{k} {name}")
               for k, (name, colour) in enumerate(zip(classes.names, classes.colors))]
    fig = Figure(figsize=(3.0, 0.28 * len(patches) + 0.3), layout="constrained")
    fig.legend(handles=patches, loc="center", frameon=False)
    return fig


SUFFIXES = ("labels", "mask", "overlay")  # an image's outputs: <stem>_<suffix>.png
LEGEND = "legend.png"
PREDICTED_BY = "predicted_by.json"  # in an output folder: the checkpoint and network that wrote it, its outputs


@dataclass
class Predicted:
    written: list[Path]  # every output file, legend.png last
    unread: list[str]  # the images that could not be read or segmented, a message each: they have no outputs


def predict(
    checkpoint: Path, images: list[Path], out_dir: Path, network: str = "teacher", device: str = "auto",
    progress: Callable[[float], None] | None = None,
) -> Predicted:
    """Writes OUT/<stem>_labels.png (class ids), <stem>_mask.png (palette colours) and
    <stem>_overlay.png (image blended with the mask) per image, and OUT/legend.png (the colour of
    each class). An image given twice (by name and in its folder, say) is segmented once; one that
    cannot be read is named and passed over, so one bad file among thousands costs only itself.
    `progress`: called with the images done, 0 once the model is loaded, then as each tile of an
    image is (a large image runs tile by tile: minutes on a CPU)."""
    images = unique_paths(images)
    stems = [Path(p).stem for p in images]
    first_with_stem = {}
    for path, stem in zip(images, stems):  # casefolded: one file on macOS and Windows
        first = first_with_stem.setdefault(stem.casefold(), path)
        if first != path:
            same = f"the same file name stem '{stem}'" if first.stem == stem else \
                f"file name stems '{first.stem}' and '{stem}', one name on macOS and Windows"
            raise S4alError(f"{first} and {path}: {same}; their outputs would overwrite each other (predict them into "
                            "separate folders)")
    out_dir = Path(out_dir)
    outputs = [f"{stem}_{suffix}.png" for stem in stems for suffix in SUFFIXES] + [LEGEND]
    inputs = {_file_identity(Path(p)) for p in images}
    overwritten = [str(out_dir / name) for name in outputs if _file_identity(out_dir / name) in inputs]
    if overwritten:
        raise S4alError(f"{first_of(overwritten)}: an input image that predict would overwrite with its output; "
                        "give another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise S4alError(f"{out_dir}: exists and is not a folder; give a folder for the output")
    dev = setup_device(device)
    state = load_checkpoint(Path(checkpoint))
    made_by = {"checkpoint": str(Path(checkpoint).resolve()), "sha256": file_digest(Path(checkpoint)),
               "network": network}
    earlier = _outputs_replaceable(out_dir, outputs, made_by)
    model, cfg = trained_model(state, Path(checkpoint), network, dev)
    classes = class_set(cfg.dataset, state["classes"], state.get("colours"))
    if cfg.dataset.root is not None and out_dir.resolve().is_relative_to(Path(cfg.dataset.root).resolve()):
        raise S4alError(f"{out_dir}: in the dataset folder {cfg.dataset.root} the checkpoint was trained on, where "
                        "its outputs would join the dataset as images; give --out a folder outside it")
    output_folder(out_dir)
    with atomic_write(out_dir / PREDICTED_BY, "w") as file:  # before any output: a killed run's are known as its
        json.dump({**made_by, "classes": list(classes.names), "outputs": sorted({*earlier, *outputs})}, file, indent=1)
    written, unread = [], []
    for done, (path, stem) in enumerate(zip(images, stems)):
        if progress is not None:
            progress(done)
        tiles_done = None if progress is None else lambda share, done=done: progress(done + share)
        try:
            written += _predict_one(model, classes, Path(path), out_dir / stem, dev, cfg.dataset.resize, tiles_done)
            continue
        except DatasetError as err:
            unread.append(str(err))
        except MemoryError:  # the network runs tile by tile, but the image and its outputs are held whole
            unread.append(f"{path}: too large to segment in this machine's memory; split it into smaller images")
        for suffix in SUFFIXES:  # an image not segmented has no outputs: none of an earlier run, none part-written
            (out_dir / f"{stem}_{suffix}.png").unlink(missing_ok=True)
    written.append(out_dir / LEGEND)
    with atomic_write(written[-1]) as file:
        legend(classes).savefig(file, dpi=100, format="png")
    return Predicted(written, unread)


def _predict_one(model: torch.nn.Module, classes: ClassSet, path: Path, out_stem: Path, device: torch.device,
                 resize: tuple[int, int] | None, progress: Callable[[float], None] | None) -> list[Path]:
    """Writes one image's outputs (SUFFIXES), OUT_STEM_<suffix>.png; an array is let go once written
    (a large image's arrays are most of the memory predict takes)."""
    image = read_image(path)
    labels = segment(model, image, device, resize, progress)
    colours = classes.colorize(labels)
    written = [_write_png(out_stem, "labels", labels)]
    del labels
    return [*written, _write_png(out_stem, "mask", colours), _write_png(out_stem, "overlay", overlay(image, colours))]


def _write_png(out_stem: Path, suffix: str, pixels: np.ndarray) -> Path:
    target = out_stem.parent / f"{out_stem.name}_{suffix}.png"
    with atomic_write(target) as file:  # a kill leaves no PNG cut short under an output's name
        Image.fromarray(pixels).save(file, format="PNG")
    return target


def unique_paths(paths: list[Path]) -> list[Path]:
    """`paths` without a second name of one file (given by name and in its folder, or spelt in another
    case on a disk that ignores case), in order."""
    firsts: dict = {}
    for path in map(Path, paths):
        firsts.setdefault(_file_identity(path), path)
    return list(firsts.values())


def _file_identity(path: Path) -> tuple[int, int, str] | Path:
    """The same for the names of one file that differ in case alone (one name on a disk that ignores
    case), or its path resolved (where it cannot be read or the disk gives no inode numbers); other
    names of one file (hard links) are other images, with outputs of their own."""
    try:
        found = path.stat()
    except OSError:
        return path.resolve()
    return (found.st_dev, found.st_ino, path.name.casefold()) if found.st_ino else path.resolve()


def predicted_by(out_dir: Path) -> dict | None:
    """The record of an output folder: the model that wrote its outputs and their names (None: it has
    no record)."""
    path = Path(out_dir) / PREDICTED_BY
    if not Path(out_dir).is_dir():
        return None
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise S4alError(f"{path}: unreadable ({err}); it says which model wrote the folder's outputs: give another "
                        "--out, or delete the file if they may be replaced") from None
    if not isinstance(record, dict) or not {"checkpoint", "sha256", "network", "outputs"} <= record.keys():
        raise S4alError(f"{path}: not a record of s4al predict; give another --out")
    return record


def _outputs_replaceable(out_dir: Path, outputs: list[str], made_by: dict) -> list[str]:
    """The outputs the folder's record lists, which this prediction may replace where it is of the
    same checkpoint and network (a rerun, or one killed part-way). Refused before anything is
    written: a file named like an output that no prediction wrote (a mask of the user's), and
    another model's outputs, which would stand beside these under one legend."""
    record = predicted_by(out_dir) or {"outputs": []}
    listed = set(record["outputs"])
    taken = [str(out_dir / name) for name in outputs if name not in listed and (out_dir / name).exists()]
    if taken:
        raise S4alError(f"{first_of(taken)}: already there, and not written by s4al predict ({PREDICTED_BY} there does "
                        "not list it): give another --out, or move the file (an output of an earlier version of s4al: "
                        "delete it)")
    others = [name for name in listed if (out_dir / name).exists()]
    if others and (record["sha256"], record["network"]) != (made_by["sha256"], made_by["network"]):
        raise S4alError(f"{out_dir}: holds the outputs of another model ({record['checkpoint']}, {record['network']}, "
                        f"says {PREDICTED_BY}); give another --out, or empty the folder first")
    return sorted(others)
