"""Acquisition heuristics: pure functions from class probabilities to informativeness scores, and
the names `active.metric` accepts (metric_names(); s4al/config.py validates against them).

`probs` is a softmax output (N, C, H, W); a pixel score map is (N, H, W), higher = more informative.
A new heuristic is a function of that form, keyword arguments after `probs` being its options
(`active.metric_options`), and an entry in SCORE_FUNCTIONS, or, from a package of its own, an
entry point of the group `s4al.scores` (score_function() reads both: nothing else lists them).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Callable

import torch
from torch import Tensor

from s4al.errors import S4alError


def _check_probs(probs: Tensor) -> Tensor:
    if probs.dim() != 4:
        raise ValueError(f"probs must be (N, C, H, W), got shape {tuple(probs.shape)}")
    return probs.float()


def entropy(probs: Tensor) -> Tensor:
    """-sum_c p log p; an underflowed p adds 0, not NaN (p is clamped to the smallest normal float:
    tiny * log(tiny) ~ -1e-36). Clamp, log and multiply in place, one temporary: on a 2-CPU machine
    a sixth of the time of torch.special.entr, which runs on one thread."""
    probs = _check_probs(probs)
    return probs.clamp(min=torch.finfo(probs.dtype).tiny).log_().mul_(probs).sum(dim=1).neg_()


def least_confidence(probs: Tensor) -> Tensor:
    """1 - max_c p."""
    return 1.0 - _check_probs(probs).amax(dim=1)


def margin(probs: Tensor) -> Tensor:
    """1 - (p_top1 - p_top2): high where the two best classes are close."""
    probs = _check_probs(probs)
    if probs.shape[1] < 2:
        raise ValueError("margin needs at least 2 classes")
    top2 = probs.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def random_scores(shape: tuple[int, int], cell: int, generator: torch.Generator | None = None) -> Tensor:
    """(H, W) uniform [0, 1) scores, one draw per `cell` x `cell` block from the top left, drawn from
    `generator` (a seeded CPU torch.Generator for reproducibility). A cell's mean is then one
    uniform draw whatever its size: a mean of pixel draws varies more in a cell of fewer pixels (an
    image's edge cells) and would make those the likelier pick."""
    h, w = shape
    draws = torch.rand((-(-h // cell), -(-w // cell)), generator=generator)
    return draws.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:h, :w]


SCORE_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "entropy": entropy,
    "least_confidence": least_confidence,
    "margin": margin,
}
# The metrics that read no probabilities, chosen by s4al/acquisition/pool.py
RANDOM = "random"  # random_scores: one draw per cell (per image at image level), no network
CORESET = "coreset"  # whole images by k-center greedy on pooled features (s4al/acquisition/coreset.py)
ENTRY_POINT_GROUP = "s4al.scores"


@cache
def plugin_points() -> dict[str, tuple[EntryPoint, ...]]:
    """The entry points installed packages register in the group `s4al.scores` (in their
    pyproject.toml: `[project.entry-points."s4al.scores"] name = "module:function"`), by name; read,
    not loaded: a package's score is imported as a config names it (score_function)."""
    points: dict[str, list[EntryPoint]] = defaultdict(list)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        points[point.name].append(point)
    return {name: tuple(found) for name, found in points.items()}


def metric_names() -> tuple[str, ...]:
    """Every name `active.metric` accepts: s4al's heuristics, the packages', then random and coreset."""
    return tuple(dict.fromkeys([*SCORE_FUNCTIONS, *plugin_points(), RANDOM, CORESET]))


def score_function(name: str) -> Callable[..., Tensor]:
    """The function of heuristic `name`: s4al's own (a package's of the same name is not taken), or
    the one package's that registers it."""
    return SCORE_FUNCTIONS[name] if name in SCORE_FUNCTIONS else _plugin_function(name)


@cache
def _plugin_function(name: str) -> Callable[..., Tensor]:
    points = plugin_points().get(name, ())
    if not points:
        raise ValueError(f"unknown acquisition metric '{name}'; known: {', '.join(metric_names())}")
    where = " and ".join(f"'{point.name} = {point.value}'" for point in points)
    if len(points) > 1 or name in (RANDOM, CORESET):
        raise S4alError(f"entry points {where} of {ENTRY_POINT_GROUP}: the name '{name}' is taken (by s4al or "
                        "another package); register the score under a name of its own")
    try:
        function = points[0].load()
    except Exception as err:  # a package's own import error, whatever it is
        raise S4alError(f"entry point {where} of {ENTRY_POINT_GROUP}: cannot be loaded: {type(err).__name__}: "
                        f"{err}") from err
    if not callable(function):
        raise S4alError(f"entry point {where} of {ENTRY_POINT_GROUP}: names {function!r}, not a function")
    return function


def check_metric_name(name: str) -> None:
    """Refuses a name `active.metric` cannot give."""
    if name not in metric_names():
        raise ValueError(f"unknown acquisition metric {name!r}; valid: {', '.join(metric_names())} (a package's own "
                         f"scores are its entry points of the group {ENTRY_POINT_GROUP}: is it installed here?)")


def check_metric(name: str, level: str, options: Mapping[str, object]) -> None:
    """Refuses a metric of another level than `level` (active.level), one whose function cannot be
    loaded, or options (active.metric_options) it does not take as keyword arguments, lacks, or takes
    as numbers where text is given (YAML reads `1e-3` as text)."""
    if level == "region" and name == CORESET:
        raise ValueError(f"active.metric '{CORESET}' is image-level only: set active.level: image")
    if name in (RANDOM, CORESET):
        if options:
            raise ValueError(f"active.metric '{name}' takes no options, got {', '.join(options)}")
        return
    parameters = list(inspect.signature(score_function(name)).parameters.values())[1:]  # after probs
    named = {p.name: p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = [key for key in options if key not in named]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters):
        raise ValueError(f"active.metric '{name}' takes no option {', '.join(map(repr, unknown))} "
                         f"(its options: {', '.join(named) or 'none'})")
    missing = [key for key, p in named.items() if p.default is p.empty and key not in options]
    if missing:
        raise ValueError(f"active.metric '{name}' needs the option {', '.join(map(repr, missing))} "
                         f"(active.metric_options.{missing[0]})")
    for key, value in options.items():
        default = named[key].default if key in named else None
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            raise ValueError(f"active.metric_options.{key}: {value!r} is text, where '{name}' takes a number "
                             f"(its default: {default}); YAML reads 1e-3 as text: write 0.001")


def pixel_scores(name: str, probs: Tensor, options: Mapping[str, object] | None = None) -> Tensor:
    """(N, H, W) scores of heuristic `name`, given its `options`."""
    scores = score_function(name)(probs, **(options or {}))
    expected = (probs.shape[0], *probs.shape[2:])
    if not isinstance(scores, Tensor) or tuple(scores.shape) != expected:
        got = f"shape {tuple(scores.shape)}" if isinstance(scores, Tensor) else type(scores).__name__
        raise S4alError(f"acquisition metric '{name}' gave scores of {got} for probabilities "
                         f"of shape {tuple(probs.shape)}: a score function returns (N, H, W) = {expected}")
    return scores
