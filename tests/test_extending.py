"""Adding an acquisition score takes one place, the registry in s4al/acquisition/scores.py, or an
entry point of a package of its own: the config accepts its name and options and the pool is scored
with it (docs/design.md, "Adding an acquisition score")."""

import math
import re

import pytest
import torch
from torch import nn

from conftest import tiny_config
from s4al.acquisition.pool import choose_regions, score_cells
from s4al.acquisition.scores import SCORE_FUNCTIONS, metric_names, pixel_scores
from s4al.config import ConfigError, load_config, parse_override
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


def test_a_score_of_a_package_of_its_own_is_a_metric_whose_options_the_config_gives(score_plugin):
    """An installed package registers its score as an entry point of `s4al.scores`; the keyword
    arguments of its function are the options `active.metric_options` gives it."""
    assert score_plugin in metric_names()
    probs = torch.tensor([0.8, 0.2, 0.0]).view(1, 3, 1, 1)
    assert pixel_scores(score_plugin, probs).item() == pytest.approx(-0.8 * math.log(0.8) - 0.2 * math.log(0.2))
    # temperature 0.5 squares them: 16/17 and 1/17
    sharpened = math.log(17) - 16 / 17 * math.log(16)
    assert pixel_scores(score_plugin, probs, {"temperature": 0.5}).item() == pytest.approx(sharpened, rel=1e-5)
    cfg = tiny_config(active={"metric": score_plugin, "metric_options": {"temperature": 0.5}})
    assert cfg.active.metric_options == {"temperature": 0.5}
    given = load_config("demo", parse_override(["active.metric=tempered_entropy", "active.metric_options.temperature=2"]))
    assert given.active.metric_options == {"temperature": 2}


def test_options_a_metric_does_not_take_are_refused_naming_what_it_takes(score_plugin):
    for active, said in (
        ({"metric": score_plugin, "metric_options": {"temp": 2}}, "'tempered_entropy' takes no option 'temp' "
                                                                  "(its options: temperature)"),
        ({"metric": "entropy", "metric_options": {"temperature": 2}}, "'entropy' takes no option 'temperature' "
                                                                      "(its options: none)"),
        ({"metric": "random", "metric_options": {"seed": 1}}, "'random' takes no options, got seed"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            tiny_config(active=active)


def test_the_options_reach_the_score_of_every_cell(score_plugin):
    """Over HotCellModel's cells: uniform ones score log C at any temperature; the hot cell's class-0
    probability 1 / (1 + (C-1) e^-20) becomes 1 / (1 + (C-1) e^-10) at temperature 2."""
    cfg = tiny_config(active={"metric": score_plugin, "metric_options": {"temperature": 2.0}})
    dataset = build_dataset(cfg.dataset, "train", cfg.seed)
    c = dataset.classes.num_classes
    cells = score_cells(HotCellModel(c), dataset, [3], {}, cfg.active, CPU, cfg.seed, fast="off")[3]
    top = 1 / (1 + (c - 1) * math.exp(-10))
    rest = math.exp(-10) * top
    assert cells[0, 0] == pytest.approx(math.log(c), rel=1e-5)
    assert cells[1, 2] == pytest.approx(-top * math.log(top) - (c - 1) * rest * math.log(rest), rel=1e-4)


def test_a_name_two_packages_register_is_refused_where_a_config_names_it_and_s4al_s_own_stay(installed):
    installed("first_scores", "def twice(probs):\n    return probs[:, 0]\n", "[s4al.scores]\ntwice = first_scores:twice\n")
    installed("second_scores", "def twice(probs):\n    return probs[:, 1]\n\ndef entropy(probs):\n    return probs[:, 1]\n",
              "[s4al.scores]\ntwice = second_scores:twice\nentropy = second_scores:entropy\n")
    assert metric_names().count("twice") == 1 and metric_names().count("entropy") == 1
    with pytest.raises(ConfigError, match=r"entry points 'twice = first_scores:twice' and 'twice = second_scores:twice' "
                                          r"of s4al.scores: the name 'twice' is taken"):
        tiny_config(active={"metric": "twice"})
    probs = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    assert tiny_config().active.metric == "entropy" and pixel_scores("entropy", probs).item() == pytest.approx(math.log(2))


def test_a_package_whose_score_fails_to_load_is_named_where_a_config_names_it(installed):
    installed("broken_scores", "import not_installed_anywhere\n", "[s4al.scores]\nbroken = broken_scores:broken\n")
    assert "broken" in metric_names() and tiny_config().active.metric == "entropy"  # other runs go on
    with pytest.raises(ConfigError, match=r"entry point 'broken = broken_scores:broken' of s4al.scores: cannot be "
                                          r"loaded: ModuleNotFoundError"):
        tiny_config(active={"metric": "broken"})


def test_options_a_score_needs_or_takes_as_numbers_are_checked_with_the_config(installed, score_plugin):
    installed("top_scores", "def top_k_margin(probs, k):\n    return probs[:, 0] * k\n",
              "[s4al.scores]\ntop_k_margin = top_scores:top_k_margin\n")
    with pytest.raises(ConfigError, match=re.escape("active.metric 'top_k_margin' needs the option 'k' "
                                                    "(active.metric_options.k)")):
        tiny_config(active={"metric": "top_k_margin"})
    assert tiny_config(active={"metric": "top_k_margin", "metric_options": {"k": 3}}).active.metric_options == {"k": 3}
    with pytest.raises(ConfigError, match=re.escape("active.metric_options.temperature: '1e-3' is text, where "
                                                    "'tempered_entropy' takes a number (its default: 1.0)")):
        load_config("demo", parse_override([f"active.metric={score_plugin}", "active.metric_options.temperature=1e-3"]))


def test_an_empty_mapping_given_for_the_options_empties_them(score_plugin, tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text(f"active:\n  metric: {score_plugin}\n  metric_options:\n    temperature: 2.0\n")
    assert load_config(own).active.metric_options == {"temperature": 2.0}
    switched = load_config(own, parse_override(["active.metric=entropy", "active.metric_options={}"]))
    assert (switched.active.metric, switched.active.metric_options) == ("entropy", {})
    added = load_config(own, parse_override(["active.metric_options.temperature=0.5"]))
    assert added.active.metric_options == {"temperature": 0.5}
