"""The report's figures, drawn with matplotlib (Agg) and saved as PNG: label efficiency (the paper's
Fig. 3), per-class IoU per cycle, the classes of the bought pixels (Fig. S1), the regions asked in
the latest asking cycle and qualitative predictions on a few val images (Figs. S2/S3)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from s4al.errors import S4alError
from s4al.text import counted, first_of, shell
from s4al.atomic import output_folder
from s4al.active.ledger import CLASSES_META, Ledger, Region
from s4al.active.phases import CyclePhases
from s4al.config import RunConfig, load_run_config
from s4al.data import IGNORE_INDEX, ClassSet, DatasetError, SegmentationDataset, build_dataset
from s4al.distributed import setup_device
from s4al.deploy.predict import class_set, segment
from s4al.report.status import open_cycle, open_state
from s4al.run_folder import RunFolder
from s4al.train.checkpoint import load_checkpoint, trained_model

STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "axes.axisbelow": True, "figure.dpi": 100,
    "text.parse_math": False,  # an image id or class name with two $ in it is text, not a formula
}
DPI = 110
PAGE_WIDTH = 11.0  # inches: every figure is at most this wide
VOID_COLOUR = "#3a3a3a"
ERROR_COLOURS = {"correct": (255, 255, 255), "wrong": (220, 30, 60), "ignored": (160, 160, 160)}
REGION_COLOUR = "#ffd400"
REGION_IMAGES = 8
REGION_COLUMNS = 4
QUALITATIVE_ROWS = 4


class NotDrawn(Exception):
    """A figure this run cannot have (yet); the message says why."""


# ---- reading the run ----------------------------------------------------------------------------
def read_cycles(run_dir: Path) -> list[dict]:
    """The per-cycle summaries (cycles/cycle_*.json), in cycle order, and after them the cycle that
    has trained and asks or waits for its answers (status.open_cycle: `asking` instead of `bought`)."""
    folder = RunFolder(Path(run_dir))
    summaries = folder.summaries()
    if not folder.ledger_path.exists():
        return summaries
    with Ledger(folder.ledger_path, readonly=True) as ledger, CyclePhases(ledger) as phases:
        current = open_cycle(ledger, phases, [s["cycle"] for s in summaries])
    return summaries + [current] if current else summaries


def supervised_reference(value: float | str | Path | None, classes: Sequence[str] | None = None) -> float | None:
    """The fully supervised val mIoU (0..1): a number, or a JSON file with a top-level "miou" such
    as the result.json written by `s4al train`; one whose per-class IoU ("iou") is of other classes
    than `classes` (a run's) is refused: a reference of another dataset."""
    if value is None:
        return None
    text = str(value)
    try:
        result = json.loads(Path(text).read_text()) if Path(text).is_file() else {"miou": float(text)}
        miou = result["miou"]
    except (KeyError, TypeError, ValueError):
        raise S4alError(f"supervised mIoU {text!r}: neither a number nor a JSON file with \"miou\"") from None
    scored = {key: result.get(key, default) for key, default in (("split", "val"), ("network", "teacher"))}
    if scored != {"split": "val", "network": "teacher"}:  # an `s4al evaluate --json` of something else
        raise S4alError(f"supervised mIoU {text!r}: the {scored['network']} scored on split '{scored['split']}'; the "
                        "cycles are the teacher's val mIoU: give the teacher's on val (s4al train's result.json)")
    names = list(result["iou"]) if isinstance(result.get("iou"), dict) else None
    if classes is not None and names is not None and names != list(classes):
        raise S4alError(f"supervised mIoU {text!r}: a result of other classes ({first_of(names, 6)}) than the run's "
                        f"({first_of(list(classes), 6)}): give the fully supervised result of the run's dataset")
    if isinstance(miou, bool) or not isinstance(miou, (int, float)) or not 0 < miou <= 1:
        raise S4alError(f"supervised mIoU must be a fraction in (0, 1] (each cycle is shown as a share of it), "
                        f"got {miou!r}")
    return float(miou)


def ledger_class_names(run_dir: Path) -> list[str] | None:
    """The class names a run was made with (its ledger's), None where it has no ledger."""
    folder = RunFolder(Path(run_dir))
    if not folder.ledger_path.exists():
        return None
    with Ledger(folder.ledger_path, readonly=True) as ledger:
        return ledger.get_meta(CLASSES_META)


def _dataset(cfg: RunConfig, split: str) -> SegmentationDataset:
    try:
        return build_dataset(cfg.dataset, split, cfg.seed)
    except DatasetError as err:
        raise NotDrawn(f"the dataset cannot be read on this machine ({err})") from None


def _rgb(colour: tuple[int, int, int]) -> tuple[float, ...]:
    return tuple(v / 255 for v in colour)


def _legend_patches(colours: dict[str, tuple[int, int, int]]) -> list[Patch]:
    return [Patch(facecolor=_rgb(colour), edgecolor="0.3", label=name) for name, colour in colours.items()]


def _slanted_ticks(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", rotation_mode="anchor")


# ---- (a) label efficiency -----------------------------------------------------------------------
def efficiency_curve(cycles: list[dict], supervised_miou: float | None = None) -> Figure:
    """Val mIoU against the labelled share of the train pixels, one point per cycle (Fig. 3)."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = [100 * c["labelled_fraction"] for c in cycles]
    y = [100 * c["val"]["miou"] for c in cycles]
    ax.plot(x, y, marker="o", markersize=7, linewidth=2, color="C0", label="this run (val)")
    for cycle, xi, yi in zip(cycles, x, y):
        ax.annotate(f"cycle {cycle['cycle']}{open_state(cycle)}\n{yi:.1f}", (xi, yi), xytext=(0, 10),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9)
    if supervised_miou is not None:
        reference = 100 * supervised_miou
        ax.axhline(reference, linestyle="--", color="0.35", label=f"fully supervised ({reference:.1f})")
    ax.set(xlabel="labelled pixels (% of all train pixels)", ylabel="mIoU (%)", title="mIoU vs labelled pixels")
    ax.margins(x=0.12)
    top = max(y + ([100 * supervised_miou] if supervised_miou is not None else []))
    ax.set_ylim(0, 1.2 * top + 3)  # room above the highest point for its label, also for a single point
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    return fig


# ---- (b) per-class IoU ----------------------------------------------------------------------------
def class_iou_bars(cycles: list[dict], names: tuple[str, ...]) -> Figure:
    """Grouped bars: per class, one bar per cycle (darker = later)."""
    fig = Figure(figsize=(min(PAGE_WIDTH, 3 + 0.2 * len(names) * len(cycles)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(cycles)
    shades = colormaps["viridis"](np.linspace(0.85, 0.15, len(cycles)))
    for k, (cycle, shade) in enumerate(zip(cycles, shades)):
        iou = [100 * v if (v := cycle["val"]["iou"][name]) is not None else np.nan for name in names]
        label = f"cycle {cycle['cycle']} ({100 * cycle['labelled_fraction']:.1f}% labelled)"
        ax.bar(np.arange(len(names)) + (k - (len(cycles) - 1) / 2) * width, iou, width, color=shade, label=label)
    _slanted_ticks(ax, list(names))
    ax.set(ylabel="IoU (%)", ylim=(0, 100), title="Per-class val IoU per cycle")
    ax.grid(axis="x", visible=False)
    fig.legend(loc="outside lower center", ncols=min(len(cycles), 3), frameon=False)
    return fig


# ---- (c) what the network bought ------------------------------------------------------------------
def bought_histogram(cycles: list[dict], classes: ClassSet) -> Figure:
    """One panel per buying cycle: the share of each class (and void) in the bought pixels (Fig. S1)."""
    buying = [c for c in cycles if "bought" in c and sum(c["bought"]["class_pixels"].values())]
    if not buying:
        raise NotDrawn("no cycle has bought labels yet")
    labels = [*classes.names, "void"]
    colours = [_rgb(c) for c in classes.colors] + [VOID_COLOUR]
    fig = Figure(figsize=(min(PAGE_WIDTH, 3 + 0.55 * len(labels)), 0.8 + 2.6 * len(buying)), layout="constrained")
    axes = fig.subplots(len(buying), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for ax, cycle in zip(axes, buying):
        bought = cycle["bought"]
        counts = np.array([bought["class_pixels"].get(name, 0) for name in labels])
        bars = ax.bar(range(len(labels)), 100 * counts / counts.sum(), color=colours, edgecolor="0.25", linewidth=0.6)
        bars[-1].set_hatch("///")
        bars[-1].set_edgecolor("0.75")
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
        what = counted(bought["regions"], "region") if bought["regions"] else counted(bought["images"], "whole image")
        ax.set_title(f"cycle {cycle['cycle']}: {what}, {counts.sum():,} pixels", loc="left")
        ax.set_ylabel("% of bought pixels")
        ax.margins(y=0.18)
        ax.grid(axis="x", visible=False)
    _slanted_ticks(axes[-1], labels)
    fig.suptitle("What does the network want? Classes of the bought pixels")
    return fig


# ---- (d) the asked regions ------------------------------------------------------------------------
def _top_images(regions: list[Region], count: int) -> list[tuple[str, list[Region]]]:
    """The `count` images whose best region scored highest (ties: by image id)."""
    by_image: dict[str, list[Region]] = defaultdict(list)
    for region in regions:
        by_image[region.image_id].append(region)

    def best(item: tuple[str, list[Region]]) -> tuple[float, str]:
        return -max((r.score for r in item[1] if r.score is not None), default=-math.inf), item[0]

    return sorted(by_image.items(), key=best)[:count]


def _image_grid(count: int, aspect: float, columns: int) -> tuple[Figure, np.ndarray]:
    """A grid of image panels, `aspect` = height / width, at most PAGE_WIDTH wide."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    panel = PAGE_WIDTH / columns
    fig = Figure(figsize=(PAGE_WIDTH, rows * (panel * aspect + 0.45) + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set(xticks=[], yticks=[])
        ax.grid(False)
        ax.spines[:].set_visible(k < count)  # a thin frame: white panels stay visible on a white page
        ax.spines[:].set_color("0.7")
    return fig, axes


def asked_regions(images: list[tuple[str, np.ndarray, list[Region]]], cycle: int, total: int) -> Figure:
    """(image id, RGB image, its regions) panels with the regions drawn as rectangles."""
    height, width = images[0][1].shape[:2]
    fig, axes = _image_grid(len(images), height / width, REGION_COLUMNS)
    outline = [patheffects.withStroke(linewidth=3.2, foreground="black")]
    for ax, (image_id, image, regions) in zip(axes.flat, images):
        ax.imshow(image)
        for region in regions:
            y0, x0, y1, x1 = region.box
            box = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=REGION_COLOUR, linewidth=1.6)
            box.set_path_effects(outline)
            ax.add_patch(box)
        ax.set_title(f"{image_id} ({counted(len(regions), 'region')})", fontsize=10)
    fig.suptitle(f"Regions asked in cycle {cycle}: {len(images)} of the images with the highest-scoring regions "
                 f"({total} regions in all)")
    return fig


def asked_regions_figure(run_dir: Path, cfg: RunConfig) -> Figure:
    ledger_path = RunFolder(Path(run_dir)).ledger_path
    if not ledger_path.exists():
        raise NotDrawn(f"the run's ledger is not in the run folder ({ledger_path})")
    with Ledger(ledger_path, readonly=True) as ledger:
        regions = ledger.regions()
    if not regions:
        raise NotDrawn("no regions were asked (an image-level run, or none bought yet)")
    cycle = max(r.cycle for r in regions)
    asked = [r for r in regions if r.cycle == cycle]
    train_set = _dataset(cfg, cfg.dataset.train_split)
    index_of = {train_set.image_id(i): i for i in range(len(train_set))}
    present = [r for r in asked if r.image_id in index_of]  # an image removed from the dataset is not drawn
    if not present:
        raise NotDrawn(f"the images asked in cycle {cycle} are no longer in the dataset")
    images = [(image_id, train_set.load(index_of[image_id]).image, rs)
              for image_id, rs in _top_images(present, REGION_IMAGES)]
    return asked_regions(images, cycle, len(asked))


# ---- (e) qualitative results ----------------------------------------------------------------------
def error_map(label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: wrong pixels highlighted, ignore pixels grey, correct ones white."""
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[:] = ERROR_COLOURS["correct"]
    out[prediction != label] = ERROR_COLOURS["wrong"]
    out[label == IGNORE_INDEX] = ERROR_COLOURS["ignored"]
    return out


def spread_indices(count: int, size: int) -> list[int]:
    """`count` indices spread evenly over range(size), first and last included: a fixed choice."""
    return sorted({int(i) for i in np.linspace(0, size - 1, min(count, size)).round()})


def qualitative(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], classes: ClassSet, title: str) -> Figure:
    """Rows of (image id, image, ground truth, prediction): image | ground truth | prediction | errors."""
    height, width = rows[0][1].shape[:2]
    fig, axes = _image_grid(4 * len(rows), height / width, 4)
    for row, (image_id, image, label, prediction) in zip(axes, rows):
        labelled = label != IGNORE_INDEX
        wrong = 100 * np.mean(prediction[labelled] != label[labelled]) if labelled.any() else 0.0
        panels = (image, classes.colorize(label), classes.colorize(prediction), error_map(label, prediction))
        titles = (image_id, "ground truth", "prediction", f"errors: {wrong:.1f}% of labelled pixels")
        for ax, pixels, panel_title in zip(row, panels, titles):
            ax.imshow(pixels, interpolation="nearest")
            ax.set_title(panel_title, fontsize=10)
    handles = _legend_patches({
        **dict(zip(classes.names, classes.colors)),
        "void (ground truth)": tuple(classes.palette()[IGNORE_INDEX]),
        "wrong (errors)": ERROR_COLOURS["wrong"],
        "ignored (errors)": ERROR_COLOURS["ignored"],
    })
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    fig.suptitle(title)
    return fig


def run_classes(run_dir: Path, cfg: RunConfig, cycle: int, state: dict | None) -> ClassSet:
    """The run's classes in the colours of the `cycle` checkpoint `state`, or (that checkpoint gone)
    those the ledger names in the colours of its dataset, or (both gone) the dataset's."""
    folder = RunFolder(run_dir)
    if state is not None:
        return class_set(cfg.dataset, state["classes"], state.get("colours"))
    if folder.ledger_path.exists():
        with Ledger(folder.ledger_path, readonly=True) as ledger:
            return class_set(cfg.dataset, ledger.get_meta(CLASSES_META))
    try:
        return _dataset(cfg, cfg.dataset.train_split).classes
    except NotDrawn as reason:
        raise FileNotFoundError(f"{run_dir}: neither the cycle {cycle} checkpoint nor the ledger is in the run folder, "
                                f"and {reason}: the report has no classes to draw") from None


def qualitative_figure(run_dir: Path, cfg: RunConfig, cycle: int, classes: ClassSet, state: dict | None) -> Figure:
    """`state`: the `cycle` checkpoint, None where it is gone."""
    checkpoint = RunFolder(run_dir).checkpoint_path(cycle)
    if state is None:
        raise NotDrawn(f"the cycle {cycle} checkpoint is not in the run folder ({checkpoint})")
    val_set = _dataset(cfg, cfg.dataset.val_split)
    device = setup_device("auto")
    model, _ = trained_model(state, checkpoint, "teacher", device)
    rows = []
    for index in spread_indices(QUALITATIVE_ROWS, len(val_set)):
        sample = val_set.load(index)
        rows.append((val_set.image_id(index), sample.image, sample.label, segment(model, sample.image, device)))
    return qualitative(rows, classes, f"Val predictions of the cycle {cycle} teacher")


# ---- all of them ----------------------------------------------------------------------------------
def save_figures(
    run_dir: Path, out_dir: Path, cycles: list[dict], supervised_miou: float | None = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draws every figure the run has, its `cycles` as read_cycles reads them; returns ({name: PNG
    path}, {name: why it was not drawn})."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = load_run_config(RunFolder(run_dir).config_path)
    if not cycles:
        raise FileNotFoundError(f"{run_dir}: no cycle has trained yet; a cycle is reported once it has trained "
                                f"(`s4al status {shell(run_dir)}` shows the training under way)")
    last = cycles[-1]["cycle"]
    checkpoint = RunFolder(run_dir).checkpoint_path(last)
    state = load_checkpoint(checkpoint) if checkpoint.exists() else None  # read once, for classes and model
    classes = run_classes(run_dir, cfg, last, state)
    builders: dict[str, Callable[[], Figure]] = {
        "efficiency": lambda: efficiency_curve(cycles, supervised_miou),
        "class_iou": lambda: class_iou_bars(cycles, classes.names),
        "bought": lambda: bought_histogram(cycles, classes),
        "regions": lambda: asked_regions_figure(run_dir, cfg),
        "qualitative": lambda: qualitative_figure(run_dir, cfg, last, classes, state),
    }
    output_folder(out_dir)
    saved, skipped = {}, {}
    with mpl.rc_context(STYLE):
        for name, build in builders.items():
            try:
                figure = build()
            except NotDrawn as reason:
                skipped[name] = str(reason)
                (out_dir / f"{name}.png").unlink(missing_ok=True)  # an earlier report's, no longer this run's
                continue
            saved[name] = out_dir / f"{name}.png"
            figure.savefig(saved[name], dpi=DPI)
    return saved, skipped
