"""Label Studio formats, checked with Label Studio's own code (label-studio-sdk): the config parses
with its LabelInterface, our predictions pass its validator and decode with its RLE decoder, and
exports written with its RLE encoder read back exactly."""

import base64
import io
import json
import tracemalloc
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from s4al.active.ledger import Region
from s4al.annotation.label_studio import (
    ASKED_LABEL, ASKED_TAG, BRUSH_TAG, IMAGE_TAG, MODEL_TAG, labelling_config, read_export, task,
)
from s4al.annotation.masks import AnswerError
from s4al.data.classes import ClassSet

CLASSES = ClassSet(names=("sky", "road", "car & bus"), colors=((70, 130, 180), (128, 64, 128), (0, 0, 142)))
H, W = 20, 30
SIZES = {"img": (H, W)}


def exported_task(task_id, data, labels, names=CLASSES.names, **annotation) -> dict:
    """A task as Label Studio's JSON export writes it, its annotation painting the (H, W) class-id
    map `labels` (255: unpainted) with one brush region per class, RLE-encoded by Label Studio."""
    height, width = labels.shape
    result = [
        {"id": f"brush{k}", "type": "brushlabels", "from_name": BRUSH_TAG, "to_name": IMAGE_TAG,
         "original_width": width, "original_height": height, "image_rotation": 0, "origin": "manual",
         "value": {"format": "rle", "rle": mask2rle((labels == k).astype(np.uint8) * 255), "brushlabels": [names[k]]}}
        for k in np.unique(labels) if k != 255
    ]
    return {"id": task_id, "data": data, "predictions": [],
            "annotations": [{"id": 1000 + task_id, "result": result, "was_cancelled": False, **annotation}]}


def asked_rectangles(made_task: dict) -> list[dict]:
    """The asked-region rectangles of a task made by `task`."""
    return [r for r in made_task["predictions"][0]["result"] if r["type"] == "rectanglelabels"]


def region(region_id, box, image_id="img") -> Region:
    return Region(region_id, image_id, 0, box, "entropy", 0.5, "asked", None, "2024-01-01", None, None)


def decoded(result: dict) -> np.ndarray:
    """(H, W) bool mask of a brush result, by Label Studio's decoder."""
    rgba = decode_rle(result["value"]["rle"]).reshape(result["original_height"], result["original_width"], 4)
    return rgba[..., 3] > 0


def test_labelling_config_has_a_brush_label_per_class_in_its_colour_and_hides_the_model_and_asked_labels():
    config = labelling_config(CLASSES)
    interface = LabelInterface(config)
    assert interface.get_control(BRUSH_TAG).labels == list(CLASSES.names)
    assert interface.get_control(MODEL_TAG).labels == list(CLASSES.names)
    assert interface.get_control(ASKED_TAG).labels == [ASKED_LABEL]
    assert interface.get_object(IMAGE_TAG).value == "$image"
    root = ET.fromstring(config)
    colours = {label.get("value"): label.get("background") for label in root.iter("Label")}
    assert colours["car & bus"] == "#00008e" and colours["sky"] == "#4682b4"
    assert root.find(f"BrushLabels[@name='{BRUSH_TAG}']").get("maxUsages") == "1"  # paint goes into the person's region
    hidden = [view for view in root.iter("View") if view.get("style") == "display: none"]
    assert [control.get("name") for control in hidden[0]] == [MODEL_TAG, ASKED_TAG]
    assert "At least 50% painted = answered" in " ".join(header.get("value") for header in root.iter("Header"))


def test_task_pre_annotates_the_prediction_inside_the_asked_regions_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    prediction = rng.integers(0, 3, (H, W)).astype(np.uint8)
    prediction[:, 25:] = 1
    regions = [region(7, (0, 0, 10, 10)), region(9, (10, 20, 20, 30))]
    made = task(image, regions, prediction, CLASSES)

    interface = LabelInterface(labelling_config(CLASSES))
    assert interface.validate_prediction(made["predictions"][0], return_errors=True) == []
    assert made["data"]["image_id"] == "img" and made["data"]["region_ids"] == [7, 9]
    results = made["predictions"][0]["result"]
    rectangles = asked_rectangles(made)
    assert [r["readonly"] for r in rectangles] == [True, True]
    value = rectangles[1]["value"]
    assert value.pop("rectanglelabels") == [ASKED_LABEL]
    assert value == pytest.approx({"x": 100 * 20 / W, "y": 50.0, "width": 100 * 10 / W, "height": 50.0, "rotation": 0})

    inside = np.zeros((H, W), bool)
    inside[0:10, 0:10] = inside[10:20, 20:30] = True
    brushes = [r for r in results if r["type"] == "brushlabels"]
    person = [b for b in brushes if b["from_name"] == BRUSH_TAG]
    assert [b["value"]["brushlabels"] for b in person] == [[name] for name in CLASSES.names]
    assert not any(decoded(b).any() for b in person)  # empty: the person's paint goes in here
    assert results.index(person[0]) < min(results.index(b) for b in brushes if b["from_name"] == MODEL_TAG)
    painted = np.full((H, W), 255, np.uint8)
    for result in (b for b in brushes if b["from_name"] == MODEL_TAG):
        mask = decoded(result)
        assert not (mask & (painted != 255)).any()  # one class per pixel
        painted[mask] = CLASSES.names.index(result["value"]["brushlabels"][0])
    assert np.array_equal(painted, np.where(inside, prediction, 255))
    assert made["data"]["cycle"] == 0

    header, encoded = made["data"]["image"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
    assert shown.shape == image.shape


def test_the_empty_paint_brushes_of_each_task_are_its_own_and_of_its_images_size():
    for height, width in ((H, W), (2 * H, W + 7), (H, W)):
        made = task(np.zeros((height, width, 3), np.uint8), [region(1, (0, 0, 5, 5))],
                    np.zeros((height, width), np.uint8), CLASSES)
        person = [r for r in made["predictions"][0]["result"] if r["from_name"] == BRUSH_TAG]
        assert [b["value"]["brushlabels"] for b in person] == [[name] for name in CLASSES.names]
        for brush in person:
            assert (brush["original_height"], brush["original_width"]) == (height, width)
            assert decoded(brush).shape == (height, width) and not decoded(brush).any()
        person[0]["value"]["rle"].clear()  # a caller's change to one task leaves the next alone


def test_export_painted_with_label_studios_encoder_reads_back_exactly(tmp_path):
    labels = np.random.default_rng(1).integers(0, 3, (H, W)).astype(np.uint8)
    labels[::3, ::4] = 255
    data = {"image": "data:...", "image_id": "img", "region_ids": [7, 9]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps([exported_task(4, data, labels)]))
    (painted,) = read_export(path, CLASSES.names, SIZES)
    assert painted.image_id == "img" and painted.region_ids == (7, 9)
    assert np.array_equal(painted.labels, labels)
    assert "task 4" in painted.source


def test_a_task_submitted_as_made_reads_back_as_the_models_paint_with_the_persons_on_top(tmp_path):
    prediction = np.zeros((H, W), np.uint8)
    prediction[:, 15:] = 1
    made = task(np.zeros((H, W, 3), np.uint8), [region(7, (0, 0, 10, 10)), region(9, (10, 20, 20, 30))],
                prediction, CLASSES)
    result = made.pop("predictions")[0]["result"]
    (car,) = [r for r in result if r["from_name"] == BRUSH_TAG and r["value"]["brushlabels"] == ["car & bus"]]
    stroke = np.zeros((H, W), np.uint8)
    stroke[0:5, 0:5] = 255
    car["value"]["rle"] = mask2rle(stroke)  # the person paints 'car & bus'; 'sky' and 'road' stay unused
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{**made, "id": 3, "annotations": [{"id": 1, "result": result, "was_cancelled": False}]}]))
    (painted,) = read_export(path, CLASSES.names, SIZES)
    expected = np.full((H, W), 255, np.uint8)
    expected[0:10, 0:10] = 0  # the model's 'sky'
    expected[10:20, 20:30] = 1  # the model's 'road'
    expected[0:5, 0:5] = 2
    assert np.array_equal(painted.labels, expected)


def test_an_export_is_read_one_task_at_a_time(tmp_path):
    """A whole project's export carries every image: 24 tasks of 1 MB each, read with the memory of
    a few (json.loads of the file would hold all 24 MB)."""
    labels = np.random.default_rng(2).integers(0, 3, (H, W)).astype(np.uint8)
    image = "data:image/jpeg;base64," + "A" * 2**20
    path = tmp_path / "export.json"
    path.write_text(json.dumps([exported_task(k, {"image": image, "image_id": "img", "region_ids": [k]}, labels)
                                for k in range(24)]))
    tracemalloc.start()
    try:
        read = [painted.region_ids for painted in read_export(path, CLASSES.names, SIZES)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read == [(k,) for k in range(24)]
    assert peak < 6 * 2**20


def test_an_earlier_brush_region_paints_over_a_later_one_as_label_studio_draws_them(tmp_path):
    road = np.full((H, W), 255, np.uint8)
    road[:, :15] = 1
    car = np.full((H, W), 255, np.uint8)
    car[5:10, 10:20] = 2
    item = exported_task(1, {"image_id": "img", "region_ids": []}, car)
    item["annotations"][0]["result"] += exported_task(1, {}, road)["annotations"][0]["result"]
    path = tmp_path / "export.json"
    path.write_text(json.dumps([item]))
    (painted,) = read_export(path, CLASSES.names, SIZES)
    assert np.array_equal(painted.labels, np.where(car != 255, car, road))


def test_tasks_not_annotated_are_left_out_and_a_skipped_task_declines_its_regions(tmp_path):
    labels = np.ones((H, W), np.uint8)
    data = {"image_id": "img", "region_ids": [4]}
    skipped = exported_task(2, data, labels, was_cancelled=True)
    untouched = {**exported_task(3, data, labels), "annotations": []}
    path = tmp_path / "export.json"
    path.write_text(json.dumps([skipped, untouched]))
    (declined,) = read_export(path, CLASSES.names, SIZES)
    assert declined.declined and "task 2" in declined.source and (declined.labels == 255).all()


def test_the_asked_rectangles_of_a_task_read_back_as_their_regions_boxes_and_others_as_drawn_by_hand(tmp_path):
    regions = [region(7, (0, 0, 10, 10)), region(9, (10, 20, 20, 30))]  # 20/30 of the width: 66.666...%
    made = task(np.zeros((H, W, 3), np.uint8), regions, np.zeros((H, W), np.uint8), CLASSES)
    rectangles = asked_rectangles(made)
    drawn = {**rectangles[0], "id": "Xy3f9", "readonly": False}  # an id as Label Studio gives a drawn region
    not_this_tasks = {**rectangles[1], "id": "region_8"}
    item = exported_task(3, made["data"], np.full((H, W), 255, np.uint8))
    item["annotations"][0]["result"] += [*rectangles, drawn, not_this_tasks]
    path = tmp_path / "export.json"
    path.write_text(json.dumps([item]))
    (painted,) = read_export(path, CLASSES.names, SIZES)
    assert painted.asked_boxes == {7: (0, 0, 10, 10), 9: (10, 20, 20, 30)} and painted.hand_drawn == 2


def test_of_several_annotations_of_a_task_the_one_marked_ground_truth_is_read(tmp_path):
    road, sky = np.ones((H, W), np.uint8), np.zeros((H, W), np.uint8)
    item = exported_task(5, {"image_id": "img", "region_ids": [1]}, road)
    reviewed = exported_task(5, {}, sky)["annotations"][0]
    item["annotations"] += [{**reviewed, "id": 8, "ground_truth": True}, {**reviewed, "id": 9, "was_cancelled": True}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps([item]))
    (painted,) = read_export(path, CLASSES.names, SIZES)
    assert (painted.labels == 0).all()  # the reviewer's, marked ground truth
    item["annotations"][0]["ground_truth"] = True
    path.write_text(json.dumps([item]))
    with pytest.raises(AnswerError, match=r"task 5 \(image 'img'\): 2 annotations \(1005, 8 marked ground truth\); "
                                          r"mark the one to use as ground truth in Label Studio \(its star\), or "
                                          r"delete the others"):
        list(read_export(path, CLASSES.names, SIZES))


def test_a_tasks_file_is_refused_once_read_but_a_file_with_one_exported_task_is_an_export(tmp_path):
    made = task(np.zeros((H, W, 3), np.uint8), [region(7, (0, 0, 10, 10))], np.zeros((H, W), np.uint8), CLASSES)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([made, made]))
    with pytest.raises(AnswerError, match=f"^{path}: no task has an 'annotations' list: a tasks file"):
        list(read_export(path, CLASSES.names, SIZES))
    exported = exported_task(4, made["data"], np.ones((H, W), np.uint8))
    path.write_text(json.dumps([made, exported, made]))
    (painted,) = read_export(path, CLASSES.names, SIZES)
    assert "task 4" in painted.source and (painted.labels == 1).all()


def corrupt_rle(item):
    item["annotations"][0]["result"][0]["value"]["rle"] = [0, 0, 9, 96, 1, 2]


def wrong_size(item):
    item["annotations"][0]["result"][0]["original_height"] = H + 1


def two_annotations(item):
    item["annotations"].append({**item["annotations"][0], "id": 77})


def unknown_class(item):
    item["annotations"][0]["result"][0]["value"]["brushlabels"] = ["bicycle"]


def polygon(item):
    item["annotations"][0]["result"][0]["type"] = "polygonlabels"


def no_image_id(item):
    del item["data"]["image_id"]


@pytest.mark.parametrize("spoil, message", [
    (corrupt_rle, "corrupt RLE mask"), (wrong_size, "mask is 21x30, the image is 20x30"),
    (two_annotations, "2 annotations"), (unknown_class, "unknown class 'bicycle'"),
    (polygon, "'polygonlabels' region"), (no_image_id, "no data.image_id"),
])
def test_a_bad_task_is_refused_naming_the_file_and_the_task(tmp_path, spoil, message):
    item = exported_task(12, {"image_id": "img", "region_ids": [1]}, np.zeros((H, W), np.uint8))
    spoil(item)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(AnswerError, match=f"{path}: task 12.*{message}"):
        [painted.labels for painted in read_export(path, CLASSES.names, SIZES)]  # a mask decodes when read


@pytest.mark.parametrize("content, message", [
    (b'[{"id": 1, "annotations": [', "not a readable JSON file"),
    (b'{"id": 1}', "expected a list of tasks"),
    (b"\xff\xfe\x00garbage", "not a JSON list"),
    (b"id,annotation_id,image\n1,2,x\n", r"export.json: not a JSON list \(it does not start with '\['; a CSV or TSV "
                                          r"file\?\), expected a list of tasks \(Label Studio's JSON export: Export -> JSON\)"),
    (b"PK\x03\x04\x14\x00\x00\x00", r"export.json: a ZIP archive, expected a list of tasks \(Label Studio's JSON "
                                        r"export: Export -> JSON\)$"),
])
def test_a_file_that_is_not_a_json_export_is_refused(tmp_path, content, message):
    path = tmp_path / "export.json"
    path.write_bytes(content)
    with pytest.raises(AnswerError, match=message):
        list(read_export(path, CLASSES.names, SIZES))
