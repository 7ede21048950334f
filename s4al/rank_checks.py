"""What every rank of a torchrun job must agree on before it trains or asks anything: the
settings it was given, the images it reads, what is wrong with their masks, and the checkpoint it
resumes or scores from. A rank that
differs is refused on every rank (the main one prints it), instead of waiting in a collective the
others never reach or training and scoring other images than rank 0 believes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from s4al import distributed
from s4al.config import COMPUTED_ON_RESUME, ConfigError, RunConfig, file_digest, flat_config, flattened
from s4al.data import DatasetError
from s4al.errors import S4alError
from s4al.data.base import SegmentationDataset
from s4al.text import first_of

# What each node of a job may set for itself: where it finds the data and weights, its device and loaders.
EACH_NODE_ITS_OWN = ("dataset.root", "model.weights", *COMPUTED_ON_RESUME)


def given_the_same(cfg: RunConfig | None, overrides: dict | None = None) -> None:
    """Every rank must be given the same settings (but EACH_NODE_ITS_OWN): `cfg`, or a resume's
    `overrides`. One given other cycles or another schedule would wait in a collective the others
    never reach."""
    if distributed.world_size() == 1:
        return
    given = flat_config(cfg) if cfg is not None else flattened(overrides or {})
    given = {key: value for key, value in given.items() if key not in EACH_NODE_ITS_OWN}
    differing = _first_differing(given, ": {theirs} (rank 0: {ours})", shown=repr)
    if differing:
        rank, shown = differing
        raise ConfigError(f"rank {rank} was given other settings than rank 0, {shown}: every process of a job runs "
                          f"the same command (each node may set only {', '.join(EACH_NODE_ITS_OWN)})")


def given_the_same_options(options: Mapping[str, object]) -> None:
    """Every rank must be given the same command options ({"--split": "val", ...}): ranks share a
    split's images by batch position, so another batch size on one node scores some twice."""
    if distributed.world_size() == 1:
        return
    differing = _first_differing(dict(options), ": {theirs} (rank 0: {ours})", shown=repr)
    if differing:
        rank, shown = differing
        raise S4alError(f"rank {rank} was given other options than rank 0, {shown}: every process of a job runs "
                        "the same command")


def read_the_same_images(images: Mapping[str, list[str]]) -> None:
    """Every rank must read the same images ({what: image ids}, e.g. {"split 'train'": ...}), each
    from its own dataset.root as nodes mount data where they do: batches are drawn and pool scores
    gathered by dataset position, so one image more on one rank would train on or ask for others."""
    if distributed.world_size() == 1:
        return
    ranks = distributed.gather_objects(dict(images))
    for rank, theirs in enumerate(ranks[1:], start=1):
        for what, ids in ranks[0].items():
            if theirs.get(what) != ids:
                only = [f"{i} only on rank {rank}" for i in sorted(set(theirs.get(what, [])) - set(ids))]
                only += [f"{i} only on rank 0" for i in sorted(set(ids) - set(theirs.get(what, [])))]
                raise DatasetError(
                    f"{what}: rank {rank} reads other images than rank 0 ({len(theirs.get(what, []))} "
                    f"against {len(ids)}: {first_of(only or ['the same images in another order'], 3)}); every "
                    "process of a job must read the same dataset: give each node's dataset.root the same copy")


def read_the_same_classes(dataset: SegmentationDataset) -> None:
    """Every rank must read masks as the same classes: a node's own dataset.root may hold another
    class list, whose masks would train other labels than rank 0's."""
    if distributed.world_size() == 1:
        return
    mine = {"classes": list(dataset.classes.names), "colours": [list(c) for c in dataset.classes.colors],
            **dataset.mask_reading()}
    differing = _first_differing(mine, " {theirs} (rank 0: {ours})")
    if differing:
        rank, shown = differing
        raise DatasetError(f"rank {rank} reads masks otherwise than rank 0, {shown}: every node's dataset.root must "
                           "hold the same class list")


def read_the_same_checkpoint(path: Path) -> None:
    """Every rank must read the same checkpoint file: ranks resume or score each from their own view
    of the run folder, and a node that sees a stale or copied one would train or ask from other
    weights than rank 0 (a checkpoint it cannot read at all is refused as it loads)."""
    if distributed.world_size() == 1:
        return
    ranks = distributed.gather_objects(file_digest(path) if path.is_file() else None)
    for rank, theirs in enumerate(ranks[1:], start=1):
        if theirs != ranks[0]:
            seen = "finds no file there" if theirs is None else "reads other bytes there than rank 0"
            raise S4alError(f"{path}: rank {rank} {seen} (its node's view of the run folder is stale, or a copy): "
                            "every node must see rank 0's run folder itself, on a shared file system")


def _first_differing(mine: dict, form: str, shown=str) -> tuple[int, str] | None:
    """The first rank whose dict differs from rank 0's, and its first keys that differ, each as
    KEY + `form` (with {theirs} and {ours}, each value `shown`, or 'not given'); None where every
    rank's is rank 0's."""
    ranks = distributed.gather_objects(mine)

    def value(given: dict, key: str) -> str:
        return shown(given[key]) if key in given else "not given"

    for rank, theirs in enumerate(ranks[1:], start=1):
        keys = sorted(key for key in ranks[0].keys() | theirs.keys()
                      if key not in ranks[0] or key not in theirs or ranks[0][key] != theirs[key])
        if keys:
            return rank, first_of([key + form.format(theirs=value(theirs, key), ours=value(ranks[0], key))
                                   for key in keys], 3)
    return None


def agreed(problems: list[str]) -> list[str]:
    """Every rank's `problems` on every rank, so that all refuse together (one refusing alone would
    leave the others waiting in a collective): rank 0's, then what another rank alone meets,
    named by its rank."""
    ranks = distributed.gather_objects(problems)
    return [*ranks[0], *(f"rank {rank}: {p}" for rank, theirs in enumerate(ranks[1:], start=1)
                         for p in theirs if p not in ranks[0])]
