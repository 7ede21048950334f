import json
import math

import numpy as np
import pytest
import torch

from s4al.data.classes import IGNORE_INDEX
from s4al.metrics import Confusion, scores_from_confusion


def test_miou_on_hand_computed_confusion():
    # rows: truth, cols: prediction
    cm = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    s = scores_from_confusion(cm)
    # class 0: tp 3, gt 4, pred 5 -> 3/6; class 1: tp 4, gt 6, pred 5 -> 4/7; class 2 absent -> NaN
    assert s.iou[0] == pytest.approx(0.5)
    assert s.iou[1] == pytest.approx(4 / 7)
    assert math.isnan(s.iou[2]) and math.isnan(s.recall[2])
    assert s.miou == pytest.approx((0.5 + 4 / 7) / 2)
    assert s.recall[0] == pytest.approx(0.75) and s.recall[1] == pytest.approx(4 / 6)
    assert s.pixel_accuracy == pytest.approx(7 / 10)


def test_scores_are_reported_rounded_to_6_decimals_and_nan_as_none():
    cm = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])  # the case above
    assert scores_from_confusion(cm).as_dict(("road", "sky", "car")) == {
        "miou": 0.535714,  # (1/2 + 4/7) / 2 = 0.5357142...
        "pixel_accuracy": 0.7,
        "iou": {"road": 0.5, "sky": 0.571429, "car": None},  # 4/7 = 0.5714285...
        "recall": {"road": 0.75, "sky": 0.666667, "car": None},
    }


def test_an_empty_confusion_gives_nan_scores_reported_as_none():
    s = scores_from_confusion(torch.zeros(2, 2, dtype=torch.long))
    assert math.isnan(s.miou) and math.isnan(s.pixel_accuracy)
    assert all(math.isnan(v) for v in s.iou + s.recall)
    reported = s.as_dict(("road", "sky"))
    assert reported == {"miou": None, "pixel_accuracy": None, "iou": {"road": None, "sky": None},
                        "recall": {"road": None, "sky": None}}
    assert json.loads(json.dumps(reported, allow_nan=False)) == reported


def test_false_positive_only_class_counts_with_zero_iou():
    cm = torch.tensor([[2, 2], [0, 0]])  # class 1 predicted but never true
    s = scores_from_confusion(cm)
    assert s.iou == pytest.approx((0.5, 0.0))
    assert s.miou == pytest.approx(0.25)


def test_confusion_ignores_255_and_accumulates():
    confusion = Confusion(3)
    confusion.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 255, 1]]))
    confusion.update(torch.tensor([[2]]), torch.tensor([[2]]))
    assert confusion.matrix().tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_counts_label_prediction_pairs_of_image_batches():
    confusion = Confusion(3)
    labels = torch.tensor([[[0, 1], [IGNORE_INDEX, 2]], [[2, 2], [0, IGNORE_INDEX]]], dtype=torch.uint8)
    predictions = torch.tensor([[[0, 2], [1, 2]], [[1, 2], [0, 0]]])
    confusion.update(predictions, labels)
    confusion.update(predictions[:1], labels[:1])
    assert confusion.matrix().tolist() == [[2 + 1, 0, 0], [0, 0, 1 + 1], [0, 1, 1 + 1 + 1]]


def test_classes_no_evaluated_pixel_holds_are_named_as_mIoU_treats_them():
    from s4al.data.classes import ClassSet
    from s4al.errors import S4alWarning
    from s4al.evaluate import _warn_unseen_classes

    class ThreeImages:
        classes = ClassSet(("road", "car", "sky"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)))

        def __len__(self):
            return 3

    # rows: truth; car has no true pixel but is predicted once, sky neither
    cm = torch.tensor([[5, 1, 0], [0, 0, 0], [0, 0, 0]])
    with pytest.warns(S4alWarning) as said:
        _warn_unseen_classes(ThreeImages(), cm)
    assert [str(w.message) for w in said] == [
        "the 3 evaluated images hold no pixel of class sky: its IoU is not measured: mIoU averages the other classes",
        "the 3 evaluated images hold no pixel of class car: its IoU is 0 wherever the model predicts it, and mIoU "
        "counts it so"]
    assert scores_from_confusion(cm).iou[1:] == (0.0, pytest.approx(float("nan"), nan_ok=True))
    with pytest.warns(S4alWarning) as said:  # every mask void: no class is named, nothing is averaged
        _warn_unseen_classes(ThreeImages(), torch.zeros(3, 3, dtype=torch.long))
    assert [str(w.message) for w in said] == [
        "the 3 evaluated images hold no labelled pixel (every mask is void): nothing is scored"]


def test_a_split_of_void_masks_is_named_as_unscored_its_masks_read_up_to_the_first_labelled_one():
    from s4al.evaluate import unscored_split
    from s4al.config import load_config

    class Masks:
        def __init__(self, masks):
            self.masks, self.read = masks, []

        def __len__(self):
            return len(self.masks)

        def has_label(self, index):
            return True

        def load_label(self, index):
            self.read.append(index)
            return self.masks[index]

    void = np.full((2, 3), IGNORE_INDEX, np.uint8)
    one_pixel = void.copy()
    one_pixel[1, 2] = 0
    dataset = load_config("demo", {"dataset": {"name": "folder", "root": "data"}}).dataset
    split = Masks([void, void, void])
    assert unscored_split(split, "val", dataset) == ("split 'val' of data: none of its 3 images holds a labelled "
                                                     "pixel (every mask is void, or it has none): nothing to score")
    split = Masks([void, one_pixel, void])
    assert unscored_split(split, "val", dataset) is None and split.read == [0, 1]
