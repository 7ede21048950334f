"""Segment new images of any size with a trained checkpoint: class ids, colour masks and overlays."""

from __future__ import annotations

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
from s4al.config import DatasetConfig
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


@dataclass
class Predicted:
    written: list[Path]  # every output file, legend.png last
    unread: list[str]  # the images that could not be read, a message each: they have no outputs


def predict(
    checkpoint: Path, images: list[Path], out_dir: Path, network: str = "teacher", device: str = "auto",
    progress: Callable[[float], None] | None = None,
) -> Predicted:
    """Writes OUT/<stem>_labels.png (class ids), <stem>_mask.png (palette colours) and
    <stem>_overlay.png (image blended with the mask) per image, and OUT/legend.png (the colour of
    each class). An image given twice (by name and in its folder) is segmented once; one that
    cannot be read is named and passed over, so one bad file among thousands costs only itself.
    `progress`: called with the images done, 0 once the model is loaded, then as each tile of an
    image is (a large image runs tile by tile: minutes on a CPU)."""
    images = list({Path(p).resolve(): Path(p) for p in images}.values())
    stems = [Path(p).stem for p in images]
    first_with_stem = {}
    for path, stem in zip(images, stems):
        if stem in first_with_stem:
            raise S4alError(f"{first_with_stem[stem]} and {path}: the same file name stem '{stem}'; their outputs "
                            "would overwrite each other (predict them into separate folders)")
        first_with_stem[stem] = path
    outputs = [Path(out_dir) / f"{stem}_{suffix}.png" for stem in stems for suffix in SUFFIXES]
    inputs = {Path(p).resolve() for p in images}
    overwritten = [str(o) for o in [*outputs, Path(out_dir) / LEGEND] if o.resolve() in inputs]
    if overwritten:
        raise S4alError(f"{first_of(overwritten)}: an input image that predict would overwrite with its output; "
                        "give another --out")
    dev = setup_device(device)
    state = load_checkpoint(Path(checkpoint))
    model, cfg = trained_model(state, Path(checkpoint), network, dev)
    classes = class_set(cfg.dataset, state["classes"], state.get("colours"))
    out_dir = Path(out_dir)
    if cfg.dataset.root is not None and out_dir.resolve().is_relative_to(Path(cfg.dataset.root).resolve()):
        raise S4alError(f"{out_dir}: in the dataset folder {cfg.dataset.root} the checkpoint was trained on, where "
                        "its outputs would join the dataset as images; give --out a folder outside it")
    output_folder(out_dir)
    written, unread = [], []
    for done, (path, stem) in enumerate(zip(images, stems)):
        if progress is not None:
            progress(done)
        try:
            image = read_image(Path(path))
        except DatasetError as err:
            unread.append(str(err))
            continue
        labels = segment(model, image, dev, cfg.dataset.resize,
                         None if progress is None else lambda share, done=done: progress(done + share))
        colours = classes.colorize(labels)
        for suffix, pixels in zip(SUFFIXES, (labels, colours, overlay(image, colours))):
            target = out_dir / f"{stem}_{suffix}.png"
            with atomic_write(target) as file:  # a kill leaves no PNG cut short under an output's name
                Image.fromarray(pixels).save(file, format="PNG")
            written.append(target)
    written.append(out_dir / LEGEND)
    with atomic_write(written[-1]) as file:
        legend(classes).savefig(file, dpi=100, format="png")
    return Predicted(written, unread)
