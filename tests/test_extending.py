"""Adding an acquisition score takes one place, the registry in s4al/acquisition/scores.py: the config
accepts its name and the pool is scored with it (docs/design.md, "Adding an acquisition score")."""

import pytest
import torch
from torch import nn

from conftest import tiny_config
from s4al.acquisition.pool import choose_regions, score_cells
from s4al.acquisition.scores import SCORE_FUNCTIONS
from s4al.config import ConfigError
from s4al.data import build_dataset

CPU = torch.device("cpu")
HOT_BOX = (16, 32, 32, 48)  # cell (1, 2) of a 48x64 image's 3x4 grid of 16x16 cells


class HotCellModel(nn.Module):
    """Logits 0 for every class but class 0 at 20 inside HOT_BOX, whatever the image."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(images), self.num_classes, *images.shape[-2:])
        y0, x0, y1, x1 = HOT_BOX
        logits[:, 0, y0:y1, x0:x1] = 20.0
        return logits


def class_zero(probs: torch.Tensor) -> torch.Tensor:
    """A researcher's score: where the model believes in class 0."""
    return probs[:, 0]


def test_a_score_registered_in_the_registry_alone_is_a_valid_metric_and_asks_where_it_is_high(monkeypatch):
    with pytest.raises(ConfigError, match="class_zero"):
        tiny_config(active={"metric": "class_zero"})
    monkeypatch.setitem(SCORE_FUNCTIONS, "class_zero", class_zero)
    cfg = tiny_config(active={"metric": "class_zero", "regions_per_image": 1})  # 16x16 cells
    dataset = build_dataset(cfg.dataset, "train", cfg.seed)
    pool = [3, 4, 5]
    model = HotCellModel(dataset.classes.num_classes)
    cells = score_cells(model, dataset, pool, {}, cfg.active, CPU, cfg.seed, fast="off")
    uniform = 1 / dataset.classes.num_classes
    for i in pool:
        assert cells[i].shape == (3, 4)
        assert cells[i][1, 2] == pytest.approx(1.0, abs=1e-6)
        assert cells[i][0, 0] == pytest.approx(uniform, abs=1e-6)
    chosen = choose_regions(cells, {i: (48, 64) for i in pool}, cfg.active)
    assert [(q.index, q.box) for q in chosen] == [(3, HOT_BOX), (4, HOT_BOX), (5, HOT_BOX)]
