"""Label Studio formats, through Label Studio's own code (label-studio-sdk): the labelling config we
ship, the import tasks with their pre-annotations, and the brush masks of a JSON export.

One task per image and cycle. Its image travels inside the task as a base64 JPEG data URI
(quality 95): Label Studio displays it with no storage to set up and no network (Label Studio itself
makes such URIs for cloud storage without presigned URLs). The price is size: tasks.json is about
4/3 of the JPEGs, so a pool of a few thousand large images is better split over several imports.

The task's prediction, which Label Studio loads as the annotator's starting point, holds in order:
the asked regions as read-only rectangles; one empty brush region per class for the person's paint
(BRUSH_TAG, each class usable once, so painting goes into them); and the model's segmentation inside
the rectangles, one brush region per predicted class (MODEL_TAG). Label Studio draws the regions of
an annotation in reverse order, the first on top, so the person's paint shows over the model's;
the rectangles' and the model's label buttons are hidden, so nobody draws with them. In an export, a
pixel is painted where a brush mask's alpha is non-zero (as Label Studio's COCO exporter reads it);
where brush regions overlap, the one first in the result list wins, as Label Studio shows it."""

from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from s4al.active.ledger import Region
from s4al.acquisition.regions import box_masks
from s4al.annotation.masks import MIN_PAINTED_SHARE, UNPAINTED, AnswerError, PaintedImage, utc_time
from s4al.data.classes import ClassSet
from s4al.text import first_line

IMAGE_TAG = "image"
BRUSH_TAG = "label"  # the person's paint
MODEL_TAG = "model"  # the model's pre-painted segmentation
ASKED_TAG = "asked"
ASKED_LABEL = "asked region"
ASKED_COLOUR = (255, 0, 255)
ASKED_ID_PREFIX = "region_"  # + N: the result id of asked region N's rectangle, kept in Label Studio's annotations
BY_LABEL_STUDIO = "label-studio"  # who answered, in the ledger, regions imported from an export
MODEL_VERSION = "s4al"  # one name for every cycle: a project shows the predictions of one model version
JPEG_QUALITY = 95
# Room the editor needs around the image (page header, tabs, instructions, label bar, buttons), so
# the whole image, rectangles at its border included, shows when a task opens.
IMAGE_MAX_HEIGHT = "calc(100vh - 300px)"
INSTRUCTIONS = (
    "Label the magenta rectangles. Keep the model's paint where it is right; to correct it, click your "
    "class at the top of the Regions list and paint (your paint shows on top).",
    f"At least {MIN_PAINTED_SHARE:.0%} painted = answered. Skip: image left out.",
)


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def labelling_config(classes: ClassSet) -> str:
    """The labelling config XML: short instructions, the image, the person's brush labels (one per
    class, in its colour) and, hidden, the model's brush labels and the asked-region label."""
    class_labels = tuple(
        ("Label", {"value": name, "background": hex_colour(colour)}, ())
        for name, colour in zip(classes.names, classes.colors)
    )
    asked_label = (("Label", {"value": ASKED_LABEL, "background": hex_colour(ASKED_COLOUR)}, ()),)
    hidden = ("View", {"style": "display: none"}, (
        ("BrushLabels", {"name": MODEL_TAG, "toName": IMAGE_TAG}, class_labels),
        ("RectangleLabels", {"name": ASKED_TAG, "toName": IMAGE_TAG, "fillOpacity": "0", "strokeWidth": "3",
                             "canRotate": "false"}, asked_label),
    ))
    return LabelInterface.create({
        **{f"instruction_{n}": ("Header", {"value": text, "size": "6"}) for n, text in enumerate(INSTRUCTIONS)},
        IMAGE_TAG: ("Image", {"value": "$image", "zoom": "true", "zoomControl": "true", "defaultZoom": "fit",
                              "maxHeight": IMAGE_MAX_HEIGHT}),
        BRUSH_TAG: ("BrushLabels", {"toName": IMAGE_TAG, "maxUsages": "1"}, class_labels),
        "hidden": hidden,
    })


# ---- tasks --------------------------------------------------------------------------------------

def task(image: np.ndarray, regions: Sequence[Region], prediction: np.ndarray, classes: ClassSet,
         run_id: str | None = None) -> dict:
    """The import task of one image: `image` (H, W, 3) uint8, its asked `regions` (of one cycle), and
    the model's (H, W) class-id `prediction`, pre-annotated inside the regions only; `run_id`: the
    run's (ledger meta RUN_ID), which its import checks."""
    height, width = prediction.shape
    inside = box_masks([[region.box for region in regions]], height, width)[0].numpy()
    result = [_asked_rectangle(region, height, width) for region in regions]
    result += [_brush_of(f"paint_{k}", BRUSH_TAG, list(_empty_rle(height, width)), height, width, name)
               for k, name in enumerate(classes.names)]
    result += [
        _brush(f"model_{k}", MODEL_TAG, (prediction == k) & inside, classes.names[k])
        for k in np.unique(prediction[inside])
    ]
    return {
        "data": {
            "image": _data_uri(image),
            "image_id": regions[0].image_id,
            "cycle": regions[0].cycle,
            "region_ids": [region.region_id for region in regions],
            **({"run_id": run_id} if run_id else {}),
        },
        "predictions": [{"model_version": MODEL_VERSION, "result": result}],
    }


def _data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _placed(result_id: str, tag: str, kind: str, height: int, width: int, value: dict) -> dict:
    return {
        "id": result_id, "from_name": tag, "to_name": IMAGE_TAG, "type": kind,
        "original_width": width, "original_height": height, "image_rotation": 0, "value": value,
    }


def _asked_rectangle(region: Region, height: int, width: int) -> dict:
    y0, x0, y1, x1 = region.box
    value = {
        "x": 100 * x0 / width, "y": 100 * y0 / height,
        "width": 100 * (x1 - x0) / width, "height": 100 * (y1 - y0) / height,
        "rotation": 0, "rectanglelabels": [ASKED_LABEL],
    }
    return {**_placed(f"{ASKED_ID_PREFIX}{region.region_id}", ASKED_TAG, "rectanglelabels", height, width, value),
            "readonly": True}


def _brush(result_id: str, tag: str, mask: np.ndarray, name: str) -> dict:
    """A brush result of control `tag` painting `mask` ((H, W) bool) with class `name`."""
    return _brush_of(result_id, tag, mask2rle(mask.astype(np.uint8) * 255), *mask.shape, name)


def _brush_of(result_id: str, tag: str, rle: list[int], height: int, width: int, name: str) -> dict:
    value = {"format": "rle", "rle": rle, "brushlabels": [name]}
    return _placed(result_id, tag, "brushlabels", height, width, value)


@functools.lru_cache(maxsize=8)
def _empty_rle(height: int, width: int) -> tuple[int, ...]:
    """The RLE of a mask painting nothing: every task of an image size carries one per class, and
    encoding is the slow part of making a task."""
    return tuple(mask2rle(np.zeros((height, width), dtype=np.uint8)))


# ---- export -------------------------------------------------------------------------------------

@dataclass
class LeftOut:
    """An export's tasks left out as not annotated, as they are read: their region ids, and the
    name and region ids of each that holds a draft (saved in Label Studio, never submitted); and the
    annotated tasks holding a draft, whose edit is left out (read as last submitted); and the problem
    of each task that cannot be read, for the import to refuse them all at once."""
    regions: set[int] = field(default_factory=set)
    drafted: list[tuple[str, list[int]]] = field(default_factory=list)  # ("task N (image 'ID')", region ids)
    edits_drafted: list[str] = field(default_factory=list)  # "task N (image 'ID')"
    problems: list[str] = field(default_factory=list)


def read_export(path: Path, class_names: Sequence[str], sizes: Mapping[str, tuple[int, int]],
                left_out: LeftOut | None = None) -> Iterator[PaintedImage]:
    """The painted class maps of a Label Studio JSON export ("JSON" format: a list of tasks), one
    per task made by `s4al query` with a submitted or skipped annotation; tasks not annotated are
    left out. A task's brushes are checked here and decoded when its `labels` are first read. The
    file is parsed one task at a time: a whole project's export carries every image, and memory
    holds one. `sizes` (image id -> (H, W), the run's images) is checked before a map is allocated,
    so a task cannot make the reader allocate more than its image. A file whose tasks have no
    'annotations' list (every task of an export has one, empty when not annotated) is refused once
    read: it is a tasks file, not an export. `left_out` collects the tasks left out, and the problem
    of each task that cannot be read (without it, the first is raised)."""
    tasks = exported = 0
    for number, item in enumerate(json_list_items(path, "a list of tasks (Label Studio's JSON export: Export -> JSON)")):
        task_name = _task_name(number, item)
        where = f"{path}: {task_name}"
        if isinstance(item, dict) and "annotations" not in item and "data" not in item:
            raise AnswerError(f"{where}: no 'annotations' and no 'data': this looks like a JSON-MIN export; "
                              "use the JSON export (Export -> JSON) of the project")
        tasks, exported = tasks + 1, exported + (not isinstance(item, dict) or "annotations" in item)
        try:
            annotation = _annotation(item, where)
            painted = None if annotation is None else _painted(item, annotation, where, class_names, sizes)
        except AnswerError as err:
            if left_out is None:
                raise
            left_out.problems.append(str(err))
            continue
        if painted is not None:
            if left_out is not None and item.get("drafts") and not annotation.get("was_cancelled"):
                # the editor's autosave of an edit not submitted
                left_out.edits_drafted.append(task_name)
            yield painted
        elif left_out is not None and isinstance(item.get("data"), dict):
            region_ids = [r for r in item["data"].get("region_ids") or () if _is_int(r)]
            left_out.regions.update(region_ids)
            if item.get("drafts"):
                left_out.drafted.append((task_name, region_ids))
    if tasks and not exported:
        raise AnswerError(f"{path}: no task has an 'annotations' list: a tasks file (as the tasks.json of s4al "
                          "query), not Label Studio's export; export the project (Export -> JSON) and import that")


def json_list_items(path: Path, expected: str) -> Iterator[Any]:
    """The items of the JSON list in file `path`, parsed one at a time (ijson)."""
    try:
        with path.open("rb") as file:
            head = file.read(64)
            start = head.lstrip()[:1]
            if start == b"{":
                raise AnswerError(f"{path}: expected {expected}, got an object")
            if head.startswith(b"PK\x03\x04"):
                raise AnswerError(f"{path}: a ZIP archive, expected {expected}")
            if start not in (b"[", b""):
                opening = head.partition(b"\n")[0]
                table = b"," in opening or b"\t" in opening
                raise AnswerError(f"{path}: not a JSON list (it does not start with '['"
                                  f"{'; a CSV or TSV file?' if table else ''}), expected {expected}")
            file.seek(0)
            yield from ijson.items(file, "item", use_float=True)
    except (OSError, ijson.JSONError, UnicodeDecodeError) as err:
        raise AnswerError(f"{path}: not a readable JSON file ({first_line(err)})") from None


def _task_name(number: int, item: Any) -> str:
    """The task, and its image where it names one, as a message names them."""
    task_id = item.get("id") if isinstance(item, dict) else None
    data = item.get("data") if isinstance(item, dict) else None
    image_id = data.get("image_id") if isinstance(data, dict) else None
    image = f" (image '{image_id}')" if isinstance(image_id, str) else ""
    return f"task {task_id if task_id is not None else f'#{number + 1} (no id)'}{image}"


def _annotation(item: Any, where: str) -> dict | None:
    """The task's one submitted annotation (of several, the one marked ground truth), else a skipped
    one, else None."""
    if not isinstance(item, dict) or not isinstance(item.get("annotations", []), list):
        raise AnswerError(f"{where}: not a Label Studio task (expected an object with an 'annotations' list)")
    annotations = [a for a in item.get("annotations", []) if isinstance(a, dict)]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if len(submitted) > 1:
        chosen = [a for a in submitted if a.get("ground_truth") is True]
        if len(chosen) == 1:
            return chosen[0]
        ids = ", ".join(str(a.get("id")) for a in chosen or submitted)
        raise AnswerError(f"{where}: {len(submitted)} annotations ({ids}{' marked ground truth' if chosen else ''}); "
                          "mark the one to use as ground truth in Label Studio (its star), or delete the others")
    return (submitted or annotations or [None])[0]


def _results(annotation: dict, where: str) -> list[dict]:
    """The annotation's regions, but for relations drawn between them (they paint nothing)."""
    result = annotation.get("result", [])
    regions = [r for r in result if not (isinstance(r, dict) and r.get("type") == "relation")] \
        if isinstance(result, list) else None
    if regions is None or not all(isinstance(r, dict) and isinstance(r.get("value"), dict) for r in regions):
        raise AnswerError(f"{where}: the annotation's 'result' must be a list of regions, each with a 'value' object")
    return regions


def _painted(item: dict, annotation: dict, where: str, class_names: Sequence[str],
             sizes: Mapping[str, tuple[int, int]]) -> PaintedImage:
    data = item.get("data")
    image_id = data.get("image_id") if isinstance(data, dict) else None
    if not isinstance(image_id, str):
        raise AnswerError(f"{where}: no data.image_id, so not a task of `s4al query` (added to the project by hand?); "
                          "delete it in Label Studio, or import its tasks from the tasks.json that s4al query wrote")
    if image_id not in sizes:
        raise AnswerError(f"{where}: image '{image_id}' is not one of this run's train images")
    region_ids, cycle = data.get("region_ids"), data.get("cycle")
    if not isinstance(region_ids, list) or not all(_is_int(r) for r in region_ids):
        raise AnswerError(f"{where}: data.region_ids must be a list of region ids, got {region_ids!r}")
    if cycle is not None and not _is_int(cycle):
        raise AnswerError(f"{where}: data.cycle must be a cycle number, got {cycle!r}")
    results = _results(annotation, where)
    brushes = [r for r in results if r.get("from_name") != ASKED_TAG]
    rectangles = [(_asked_region(r, region_ids), r) for r in results if r.get("from_name") == ASKED_TAG]
    asked_boxes = {region_id: _box(r, where) for region_id, r in rectangles if region_id is not None}
    declined = bool(annotation.get("was_cancelled"))
    paint = _class_map([] if declined else brushes, sizes[image_id], where, class_names)
    run_id = data.get("run_id")
    return PaintedImage(where, image_id, paint, tuple(region_ids), cycle, declined, asked_boxes,
                        hand_drawn=sum(region_id is None for region_id, _ in rectangles),
                        painted_at=utc_time(annotation.get("updated_at") or annotation.get("created_at")),
                        run_id=run_id if isinstance(run_id, str) else None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no region id


def _asked_region(rectangle: dict, region_ids: list[int]) -> int | None:
    """The id of the task's asked region whose rectangle this is (as `task` writes it); None for a
    rectangle drawn by hand."""
    matched = re.fullmatch(rf"{ASKED_ID_PREFIX}(\d+)", str(rectangle.get("id")), re.ASCII)
    return int(matched[1]) if matched and int(matched[1]) in region_ids else None


def _box(rectangle: dict, where: str) -> tuple[int, int, int, int]:
    """A rectangle result as a (y0, x0, y1, x1) box in pixels of its image, each side rounded to the
    nearest pixel: a box `task` wrote in percent comes back exactly, through any float rounding."""
    value = rectangle["value"]
    try:
        height, width = float(rectangle["original_height"]), float(rectangle["original_width"])
        x, y = float(value["x"]) * width / 100, float(value["y"]) * height / 100
        x1, y1 = x + float(value["width"]) * width / 100, y + float(value["height"]) * height / 100
        return round(y), round(x), round(y1), round(x1)
    except (KeyError, TypeError, ValueError, OverflowError) as err:  # NaN and infinity do not round
        raise AnswerError(f"{where}: rectangle {rectangle.get('id')} has no readable box ({err!r})") from None


def _class_map(brushes: list[dict], shape: tuple[int, int], where: str,
               class_names: Sequence[str]) -> Callable[[], np.ndarray]:
    """What paints the brush regions, the first on top as Label Studio shows them, into an (H, W)
    class-id map of the image's registered `shape`, once called: decoding is most of the time an
    export takes to read, and a task imported before needs none. Every brush is checked here: one of
    any other size, class or RLE length is refused before anything is allocated."""
    for brush in brushes:
        size = (brush.get("original_height"), brush.get("original_width"))
        if size != tuple(shape):
            raise AnswerError(f"{where}: brush region {brush.get('id')}: mask is {size[0]}x{size[1]}, "
                              f"the image is {shape[0]}x{shape[1]} (HxW)")
    unused = list(_empty_rle(*shape))  # a class the person did not paint with, as `task` made it
    painted = []
    for brush in reversed(brushes):
        class_id, rle = _class_of(brush, where, class_names), _rle(brush, shape, where)
        if rle != unused:
            painted.append((class_id, rle, f"{where}: brush region {brush.get('id')}"))
    return functools.partial(_paint, painted, shape)


def _paint(brushes: list[tuple[int, list, str]], shape: tuple[int, int]) -> np.ndarray:
    labels = np.full(shape, UNPAINTED, dtype=np.uint8)
    for class_id, rle, name in brushes:
        try:
            rgba = decode_rle(rle)
        except (ValueError, IndexError, TypeError, OverflowError) as err:  # OverflowError: a run's value past 255
            raise AnswerError(f"{name}: corrupt RLE mask ({err})") from None
        labels[rgba.reshape(*shape, 4)[:, :, 3] > 0] = class_id
    return labels


def _class_of(brush: dict, where: str, class_names: Sequence[str]) -> int:
    if brush.get("type") != "brushlabels":
        raise AnswerError(f"{where}: a '{brush.get('type')}' region; s4al reads brush masks (brushlabels) only")
    names = brush["value"].get("brushlabels")
    if not isinstance(names, list) or len(names) != 1:
        raise AnswerError(f"{where}: a brush region must carry exactly one class, got {names!r}")
    if names[0] not in class_names:
        raise AnswerError(f"{where}: unknown class '{names[0]}' (known: {', '.join(class_names)}); repaint the task "
                          "with the run's classes in Label Studio (the labelling_config.xml of s4al query restores "
                          "them in the project's Settings > Labeling Interface > Code), then export again")
    return list(class_names).index(names[0])


def _rle(brush: dict, shape: tuple[int, int], where: str) -> list:
    """The brush region's RLE mask, its header checked against `shape`."""
    name = f"{where}: brush region {brush.get('id')}"
    rle = brush["value"].get("rle")
    if not isinstance(rle, list):
        raise AnswerError(f"{name} has no RLE mask")
    try:
        values = int.from_bytes(bytes(rle[:4]), "big")  # the RLE header: how many RGBA bytes follow
    except (ValueError, TypeError) as err:
        raise AnswerError(f"{name}: corrupt RLE mask ({err})") from None
    if values != shape[0] * shape[1] * 4:
        raise AnswerError(f"{name}: corrupt RLE mask (it holds {values / 4:g} pixels, its image is "
                          f"{shape[0]}x{shape[1]})")
    return rle
