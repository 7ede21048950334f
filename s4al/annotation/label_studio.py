"""Label Studio formats, through Label Studio's own code (label-studio-sdk): the labelling config we
ship, the import tasks with their pre-annotations, and the brush masks of a JSON export.

One task per image. Its image travels inside the task as a base64 JPEG data URI (quality 95): Label
Studio displays it with no storage to set up and no network (Label Studio itself makes such URIs
for cloud storage without presigned URLs). The price is size: tasks.json is about 4/3 of the JPEGs,
so a pool of a few thousand large images is better split over several imports.

The task's prediction holds the asked regions as read-only rectangles and the model's own
segmentation inside them as editable brush regions, one per class, so the annotator corrects
rather than paints. In an export, a pixel is painted where a brush mask's alpha is non-zero (as
Label Studio's COCO exporter reads it); where brush regions of different classes overlap, the later
one in the result list wins (the one drawn on top)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from s4al.active.ledger import Region
from s4al.active.regions import box_masks
from s4al.annotation.masks import UNPAINTED, AnswerError, PaintedImage
from s4al.data.classes import ClassSet

IMAGE_TAG = "image"
BRUSH_TAG = "label"
ASKED_TAG = "asked"
ASKED_LABEL = "asked region"
ASKED_COLOUR = (255, 0, 255)
MODEL_VERSION = "s4al"  # one name for every cycle: a project shows the predictions of one model version
JPEG_QUALITY = 95


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def labelling_config(classes: ClassSet) -> str:
    """The labelling config XML: the image, a brush label per class in its colour, and the asked regions."""
    class_labels = tuple(
        ("Label", {"value": name, "background": hex_colour(colour)}, ())
        for name, colour in zip(classes.names, classes.colors)
    )
    asked_label = (("Label", {"value": ASKED_LABEL, "background": hex_colour(ASKED_COLOUR)}, ()),)
    return LabelInterface.create({
        IMAGE_TAG: ("Image", {"value": "$image", "zoom": "true", "zoomControl": "true"}),
        BRUSH_TAG: ("BrushLabels", {"toName": IMAGE_TAG}, class_labels),
        ASKED_TAG: ("RectangleLabels", {"toName": IMAGE_TAG, "fillOpacity": "0", "strokeWidth": "3",
                                        "canRotate": "false"}, asked_label),
    })


# ---- tasks --------------------------------------------------------------------------------------

def task(image: np.ndarray, regions: Sequence[Region], prediction: np.ndarray, classes: ClassSet) -> dict:
    """The import task of one image: `image` (H, W, 3) uint8, its asked `regions`, and the model's
    (H, W) class-id `prediction`, pre-annotated inside the regions only."""
    height, width = prediction.shape
    inside = box_masks([[region.box for region in regions]], height, width)[0].numpy()
    result = [_asked_rectangle(region, height, width) for region in regions]
    result += [
        _brush(f"prediction_{k}", (prediction == k) & inside, classes.names[k])
        for k in np.unique(prediction[inside])
    ]
    return {
        "data": {
            "image": _data_uri(image),
            "image_id": regions[0].image_id,
            "region_ids": [region.region_id for region in regions],
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
    return {**_placed(f"region_{region.region_id}", ASKED_TAG, "rectanglelabels", height, width, value),
            "readonly": True}


def _brush(result_id: str, mask: np.ndarray, name: str) -> dict:
    """A brush result painting `mask` ((H, W) bool) with class `name`."""
    value = {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [name]}
    return _placed(result_id, BRUSH_TAG, "brushlabels", *mask.shape, value)


# ---- export -------------------------------------------------------------------------------------

def read_export(path: Path, class_names: Sequence[str]) -> Iterator[PaintedImage]:
    """The painted class maps of a Label Studio JSON export ("JSON" format: a list of tasks), one
    per task made by `s4al query` whose annotation paints something, decoded one at a time; tasks
    not annotated (or skipped) are left out, and so are the asked-region rectangles."""
    tasks = _load_json(path)
    if not isinstance(tasks, list):
        raise AnswerError(f"{path}: expected a list of tasks (Label Studio's JSON export), got {type(tasks).__name__}")
    for number, item in enumerate(tasks):
        where = _task_name(path, number, item)
        brushes = _brushes(_annotation(item, where), where)
        if brushes:
            yield _painted(item, brushes, where, class_names)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AnswerError(f"{path}: not a readable JSON file ({err})") from None


def _task_name(path: Path, number: int, item: Any) -> str:
    task_id = item.get("id") if isinstance(item, dict) else None
    return f"{path}: task {task_id if task_id is not None else f'#{number + 1} (no id)'}"


def _annotation(item: Any, where: str) -> dict | None:
    """The task's one submitted (not skipped) annotation, None if it has none."""
    if not isinstance(item, dict) or not isinstance(item.get("annotations", []), list):
        raise AnswerError(f"{where}: not a Label Studio task (expected an object with an 'annotations' list)")
    submitted = [a for a in item.get("annotations", []) if isinstance(a, dict) and not a.get("was_cancelled")]
    if len(submitted) > 1:
        ids = ", ".join(str(a.get("id")) for a in submitted)
        raise AnswerError(f"{where}: {len(submitted)} annotations ({ids}); keep one per task in Label Studio")
    return submitted[0] if submitted else None


def _brushes(annotation: dict | None, where: str) -> list[dict]:
    """The annotation's painted regions, in order; the asked-region rectangles are left out."""
    result = [] if annotation is None else annotation.get("result", [])
    if not isinstance(result, list) or not all(isinstance(r, dict) and isinstance(r.get("value"), dict)
                                               for r in result):
        raise AnswerError(f"{where}: the annotation's 'result' must be a list of regions, each with a 'value' object")
    return [r for r in result if r.get("from_name") != ASKED_TAG]


def _painted(item: dict, brushes: list[dict], where: str, class_names: Sequence[str]) -> PaintedImage:
    data = item.get("data")
    image_id = data.get("image_id") if isinstance(data, dict) else None
    if not isinstance(image_id, str):
        raise AnswerError(f"{where}: no data.image_id; import the tasks.json written by `s4al query`")
    where = f"{where} (image '{image_id}')"
    region_ids = data.get("region_ids")
    if not isinstance(region_ids, list) or not all(isinstance(r, int) for r in region_ids):
        raise AnswerError(f"{where}: data.region_ids must be a list of region ids, got {region_ids!r}")
    return PaintedImage(where, image_id, _class_map(brushes, where, class_names), tuple(region_ids))


def _class_map(brushes: list[dict], where: str, class_names: Sequence[str]) -> np.ndarray:
    """Paints the brush regions in order (later on top) into an (H, W) class-id map."""
    sizes = {(b.get("original_height"), b.get("original_width")) for b in brushes}
    if len(sizes) != 1 or not all(isinstance(v, int) and v > 0 for v in next(iter(sizes))):
        raise AnswerError(f"{where}: brush regions with image sizes (H, W) {sorted(map(str, sizes))}")
    labels = np.full(sizes.pop(), UNPAINTED, dtype=np.uint8)
    for brush in brushes:
        class_id = _class_of(brush, where, class_names)
        labels[_decode(brush, labels.shape, where)] = class_id
    return labels


def _class_of(brush: dict, where: str, class_names: Sequence[str]) -> int:
    if brush.get("type") != "brushlabels":
        raise AnswerError(f"{where}: a '{brush.get('type')}' region; s4al reads brush masks (brushlabels) only")
    names = brush["value"].get("brushlabels")
    if not isinstance(names, list) or len(names) != 1:
        raise AnswerError(f"{where}: a brush region must carry exactly one class, got {names!r}")
    if names[0] not in class_names:
        raise AnswerError(f"{where}: unknown class '{names[0]}'; known: {', '.join(class_names)}")
    return list(class_names).index(names[0])


def _decode(brush: dict, shape: tuple[int, int], where: str) -> np.ndarray:
    """(H, W) bool: the pixels the brush region paints (non-zero alpha)."""
    name = f"{where}: brush region {brush.get('id')}"
    rle = brush["value"].get("rle")
    if not isinstance(rle, list):
        raise AnswerError(f"{name} has no RLE mask")
    try:
        values = int.from_bytes(bytes(rle[:4]), "big")  # the RLE header: how many RGBA bytes follow
        if values != shape[0] * shape[1] * 4:
            raise ValueError(f"it holds {values / 4:g} pixels, its image is {shape[0]}x{shape[1]}")
        rgba = decode_rle(rle)
    except (ValueError, IndexError, TypeError) as err:
        raise AnswerError(f"{name}: corrupt RLE mask ({err})") from None
    return rgba.reshape(*shape, 4)[:, :, 3] > 0
