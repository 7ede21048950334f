"""Typed run configuration, loaded from a flat-ish YAML file (see s4al/configs/*.yaml)."""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Collection
from functools import cache
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from s4al.acquisition.scores import check_metric, check_metric_name
from s4al.atomic import atomic_write
from s4al.errors import S4alError
from s4al.text import first_of

FastMode = Literal["auto", "on", "off"]  # train.fast
Side = Annotated[int, Field(ge=1)]  # an image side in pixels
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"  # train.device; s4al/distributed.py setup_device checks the GPU is there
# The keys `s4al run --resume --set` may change: where the run computes (for this start only), and
# where its files are and how many cycles it has (saved in its config.yaml; s4al/active/opening.py).
COMPUTED_ON_RESUME = ("train.device", "train.num_workers")
SAVED_ON_RESUME = ("dataset.root", "model.weights", "active.cycles")
# The keys only the acquisition reads (s4al/acquisition/pool.py, the cycle's _queries and
# _record_queries, the annotation package's scoring batch). The trainer, the learner, the data,
# the initial draw and the cycle-0 epochs read none of them, so two configs equal
# in every other key train the same cycle 0, bit for bit (tests/test_benchmarks.py changes each in
# turn): a run may take another's (`s4al run --cycle0-from`).
ACQUISITION_ONLY = frozenset({"active.level", "active.metric", "active.metric_options", "active.region_size",
                              "active.regions_per_image", "active.selection", "active.global_budget",
                              "active.score_batch_size"})
CYCLE0_MAY_DIFFER = ACQUISITION_ONLY | set(COMPUTED_ON_RESUME)  # and where it computed


class Section(BaseModel):
    # no inf or nan: a number a run computes with must be finite (an infinite epoch multiplier failed
    # as the last cycle began)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _text(value):
    """A name or path YAML read as a whole number (`root: 2024`, `--set model.weights=1234`) is its text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SyntheticConfig(Section):
    num_train: int = Field(60, ge=1)
    num_val: int = Field(20, ge=1)
    height: int = Field(96, ge=16)
    width: int = Field(128, ge=16)


class DatasetConfig(Section):
    name: Literal["camvid", "cityscapes", "folder", "synthetic"] = "synthetic"
    root: Path | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = None
    resize: tuple[Side, Side] | None = None  # (H, W) applied on load; Cityscapes protocol: 688x688
    synthetic: SyntheticConfig = SyntheticConfig()

    _names_as_text = field_validator("root", "train_split", "val_split", "test_split", mode="before")(_text)

    @field_validator("root")
    @classmethod
    def _home_expanded(cls, root: Path | None) -> Path | None:
        try:
            return root.expanduser() if root is not None else None  # `--set dataset.root=~/data`: no shell expands it
        except RuntimeError as err:  # ~user of no such user
            raise ValueError(f"{root}: {err}") from None

    @model_validator(mode="after")
    def _root_needed(self) -> "DatasetConfig":
        if self.name != "synthetic" and self.root is None:
            raise ValueError(f"dataset.root is required for dataset '{self.name}'")
        if self.name == "synthetic" and self.root is not None:  # else it trains on generated streets, unsaid
            raise ValueError(f"dataset.root {self.root} with dataset 'synthetic', which is generated and reads no "
                             "folder: set dataset.name (folder for your own images) or leave out dataset.root")
        return self


class ModelConfig(Section):
    """DeepLabv3+ with a MobileNetV2 encoder at output stride 16, as in the paper (s4al/model.py)."""
    # A local .pth file (torchvision layout), "imagenet" (download, needs internet) or null (random).
    weights: str | None = None

    _weights_as_text = field_validator("weights", mode="before")(_text)


class TrainConfig(Section):
    lr: float = Field(1e-2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    batch_size: int = Field(4, ge=1)
    unlabelled_batch_size: int = Field(4, ge=1)
    epochs: int = Field(100, ge=1)
    iters_per_epoch: int = Field(50, ge=1)
    # (H, W); None: each image's own size (its scaled view cropped or padded back to it), one for all
    crop_size: tuple[Side, Side] | None = None
    scale_range: tuple[float, float] = (0.75, 1.25)
    color_jitter_p: float = Field(0.5, ge=0, le=1)
    hflip_p: float = Field(0.5, ge=0, le=1)
    num_workers: int = Field(2, ge=0)
    eval_every: int = Field(10, ge=1)  # epochs
    checkpoint_every: int = Field(1, ge=1)  # epochs
    eval_batch_size: int = Field(4, ge=1)
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # auto, cpu, cuda or cuda:N
    # bf16 autocast for training on CUDA only (slower on CPUs without bf16 units); on the fast path
    # pool scoring and evaluation run in bf16 on CUDA either way
    amp: bool = True
    # the fast learner path (s4al/train/trainer.py): the train split decoded once onto the device,
    # batched augmentation there, losses read every few steps, fused SGD. auto: on for CUDA devices
    # when the split fits in half the free memory (loader workers otherwise); on: refused if not
    fast: FastMode = "auto"
    # on the fast path on one CUDA device: the student's and the teacher's passes replayed as CUDA
    # graphs, captured at their first step (s4al/train/graphs.py); false runs them eagerly
    cuda_graphs: bool = True

    @field_validator("fast", mode="before")
    @classmethod
    def _fast_from_bool(cls, value):
        if isinstance(value, bool):  # YAML reads a bare on/off as true/false
            return "on" if value else "off"
        return value

    @model_validator(mode="after")
    def _scale_order(self) -> "TrainConfig":
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"train.scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        return self


class SSLConfig(Section):
    enabled: bool = True
    ema_momentum: float = Field(0.99, ge=0, le=1)  # the teacher's EMA of the student's weights
    confidence_threshold: float = Field(0.97, ge=0, le=1)
    confidence_weighting: bool = True
    # beyond the paper: each pixel's confidence weight divided by its pseudo class's mean
    # confidence in the batch, so Confidence Weighting no longer favours the classes the teacher
    # is surest of (the frequent ones) over the rare ones as a whole (s4al/ssl/losses.py)
    class_normalised_confidence: bool = True
    # beyond the paper: pseudo-label class shares pulled towards the labelled ones by matching the
    # argmax shares or the mean probabilities (s4al/ssl/alignment.py); "off" = the paper. With
    # class_normalised_confidence the default pair beat supervised training on CamVid and the
    # synthetic streets (docs/results.md, benchmarks/results/archive/README.md). true / false (older
    # configs) read as "probabilities" / "off"
    distribution_alignment: Literal["off", "probabilities", "argmax"] = "argmax"
    # what the aligner aims at: the labelled shares, or (beyond the paper) their geometric mean with
    # the teacher's mean probabilities over the first epoch of each cycle's SSL, fixed after it. The
    # labelled shares teach a labelled set's sampling error (CamVid seed 0 at the paper's budget:
    # Tree from 78 to 0.2 IoU); the geometric mean held it (docs/design.md)
    alignment_target: Literal["labelled", "labelled_x_predicted"] = "labelled_x_predicted"
    # beyond the paper: the student's passes on mixed, colour-jittered unlabelled batches normalise
    # with their batch statistics but leave the BatchNorm running statistics (which the teacher
    # averages and evaluation uses) to the labelled batches
    freeze_bn_on_unlabelled: bool = True
    classmix: bool = True
    balanced_classmix: bool = True
    replay: bool = True
    replay_size: int = Field(50, ge=1)
    head_share: float = Field(0.8, gt=0, le=1)  # head = most frequent classes covering this share
    n_head: int = Field(3, ge=0)
    n_tail: int = Field(2, ge=0)
    cold_start_epochs: int = Field(10, ge=0)
    balanced_from_cycle: int = Field(1, ge=0)
    balanced_from_epoch: int = Field(30, ge=0)

    @field_validator("distribution_alignment", mode="before")
    @classmethod
    def _alignment_from_bool(cls, value):
        if isinstance(value, bool):
            return "probabilities" if value else "off"
        return value


class ActiveConfig(Section):
    cycles: int = Field(2, ge=0)
    # random: a seeded `initial_fraction` of the train images (the paper's protocol);
    # labelled: exactly the train images with a label file, every other one is the pool (own data)
    initial: Literal["random", "labelled"] = "random"
    initial_fraction: float = Field(0.1, gt=0, le=1)  # ignored with initial: labelled
    level: Literal["region", "image"] = "region"
    metric: str = "entropy"  # a name in s4al/acquisition/scores.py's metric_names()
    metric_options: dict[str, bool | int | float | str] = {}  # keyword arguments of the metric's function
    region_size: int = Field(30, ge=1)
    regions_per_image: int = Field(4, ge=1)
    selection: Literal["per_image", "global"] = "per_image"
    global_budget: int | None = Field(None, ge=1)  # cells per cycle when selection == global
    reinit_each_cycle: bool = True
    final_cycle_epoch_multiplier: float = Field(2.0, gt=0)
    score_batch_size: int = Field(4, ge=1)
    # oracle: reveal ground truth (experiments); external: stop after asking, wait for `s4al import`
    annotator: Literal["oracle", "external"] = "oracle"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        check_metric_name(name)
        return name

    @model_validator(mode="after")
    def _budget(self) -> "ActiveConfig":
        check_metric(self.metric, self.level, self.metric_options)
        if self.selection == "global" and self.global_budget is None:
            raise ValueError("active.global_budget is required when active.selection is 'global'")
        if self.initial == "labelled" and (self.annotator != "external" or self.level != "region"):
            raise ValueError("active.initial 'labelled' (your masks, a person answering) needs active.annotator: "
                             "external and active.level: region: a person answers regions; the oracle and whole "
                             "images (active.level: image) are for experiments on a dataset's own labels")
        return self


# Every saved config is a complete dump of its version, named by this key (version 1, saved before
# versions existed: no key). A newer version adds keys (ADDED_IN_VERSION), which an older dump lacks.
CONFIG_VERSION = 4


class RunConfig(Section):
    config_version: Literal[CONFIG_VERSION] = CONFIG_VERSION  # type: ignore[valid-type]
    seed: int = Field(3108, ge=0)
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    ssl: SSLConfig = SSLConfig()
    active: ActiveConfig = ActiveConfig()

    def cycle_epochs(self, cycle: int) -> int:
        """Epochs of an active-learning cycle: the last one (`active.cycles`) trains longer."""
        multiplier = self.active.final_cycle_epoch_multiplier if cycle == self.active.cycles else 1.0
        return max(1, round(self.train.epochs * multiplier))


class ConfigError(S4alError):
    pass


PRESETS = ("camvid", "cityscapes", "demo")


def merge_overrides(base: dict, override: dict, prefix: str = "") -> dict:
    """Nested config dicts merged section by section; `override`'s values win. A mapping-valued key
    (active.metric_options) is merged too, but an empty mapping given for it empties it."""
    out = dict(base)
    for key, value in override.items():
        name = f"{prefix}{key}"
        nested = isinstance(value, dict) and isinstance(out.get(key), dict) and (value or name not in leaf_keys())
        out[key] = merge_overrides(out[key], value, f"{name}.") if nested else value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping, where PyYAML keeps the last silently (a
    second `train:` section would replace the first whole)."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, which PyYAML merges itself
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"'{key}' is given twice (first on line {first[key]}); the second would replace the "
                    "first silently", key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as file:  # a stream: YAML's messages name the file
            data = yaml.load(file, Loader=_UniqueKeyLoader) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def preset_path(name: str) -> Path:
    return Path(str(resources.files("s4al") / "configs" / f"{name}.yaml"))


def load_config(source: str | Path, overrides: dict | None = None) -> RunConfig:
    """Load a preset name (camvid, cityscapes, demo) or a YAML path; `overrides` is a nested dict
    (from --set). Keys the file leaves out take today's defaults, but in a run's config.yaml of an
    earlier config_version, which is read as that run ran."""
    path = preset_path(str(source)) if str(source) in PRESETS else Path(source)
    data = _read_yaml(path)
    if data.get("config_version", CONFIG_VERSION) != CONFIG_VERSION:  # a run's config.yaml of an earlier s4al
        data = _migrated(data, path)  # read as that run ran, not with today's defaults for the keys added since
    cfg = _validated(data, path, overrides)
    _check_held_out(cfg.dataset)
    return cfg


def _check_held_out(dataset: DatasetConfig) -> None:
    """A split measured on is not the training split, which would score the images trained on; checked
    for a config made now (a run's saved one is read as it ran)."""
    for key, split in (("val_split", dataset.val_split), ("test_split", dataset.test_split)):
        if split == dataset.train_split:
            raise ConfigError(f"dataset.{key} is the training split '{split}': set it to a split held out from "
                              "training")


# Keys each config version added, with the behaviour a run had before each existed: an older dump
# lacks them only because the run was made before them, and ran as the code did then. (Version-1
# dumps were written section by section, so they may lack any key; these are the ones whose
# default changed since.)
ADDED_IN_VERSION = {
    2: {
        "ssl": {
            "distribution_alignment": "off",
            "class_normalised_confidence": False,
            "alignment_target": "labelled",
            "freeze_bn_on_unlabelled": False,
        },
        "train": {"fast": "off"},
        "active": {"initial": "random"},
    },
    3: {"train": {"cuda_graphs": False}},
    4: {"active": {"metric_options": {}}},
}

# Options that are gone, with the one value that does what s4al does now: a saved config that set
# another value made a run this s4al cannot continue or reproduce.
REMOVED_KEYS = {
    "model": {"encoder": "mobilenet_v2", "output_stride": 16, "channels_last": True},
    "train": {"eval_network": "teacher", "sync_bn": False},
    "ssl": {"mask_unconfident": False, "class_balance_power": 0.0, "teacher_train_mode": False,
            "cold_start_sup_weight": 1.5, "paste_labelled_tail": 0},
    "active": {"scorer": "teacher"},
}


def load_run_config(path: Path, overrides: dict | None = None) -> RunConfig:
    """A run folder's saved config (resuming, reports): what the run was made with, whatever today's
    defaults. A damaged file (a section or key missing) is refused, never filled with defaults."""
    return _validated(_migrated(_read_yaml(path), path), path, overrides)


def saved_config(data: dict, source: str | Path) -> RunConfig:
    """A config dumped by a run (its config.yaml, a checkpoint's copy), read as that run ran."""
    return _validated(_migrated(data, source), source)


def _migrated(data: dict, source: str | Path) -> dict:
    """A saved config of any version as a complete config of the current version."""
    version = data.get("config_version", 1)
    if type(version) is not int or not 1 <= version <= CONFIG_VERSION:
        raise ConfigError(f"{source}: config_version {version!r}; this s4al reads versions 1 to {CONFIG_VERSION}")
    data = _without_removed_keys(data, source)
    added_since = {}
    for later in range(version + 1, CONFIG_VERSION + 1):
        added_since = merge_overrides(added_since, ADDED_IN_VERSION[later])
    missing = [key for key in _missing_keys(RunConfig, data, sections_only=version == 1)
               if not _holds_value(added_since, key)]
    if missing:
        raise ConfigError(f"{source}: incomplete saved config, missing {first_of(missing, 8)}; the file is damaged "
                          "(a run writes every key): restore it rather than let defaults stand in (a config written by "
                          "hand leaves out config_version, and its missing keys take today's defaults)")
    return {**merge_overrides(added_since, data), "config_version": CONFIG_VERSION}


def _holds_value(nested: dict, dotted: str) -> bool:
    """Whether `nested` gives the key `dotted` (section.key) a value (a whole section is no value)."""
    node = nested
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return dotted in leaf_keys()


@cache
def leaf_keys(model: type[BaseModel] | None = None, prefix: str = "") -> frozenset[str]:
    """Every key of the config that holds a value, not a section ("train.lr", "active.metric_options")."""
    keys = set()
    for name, field in (model or RunConfig).model_fields.items():
        section = _section_of(field)
        keys |= leaf_keys(section, f"{prefix}{name}.") if section else {prefix + name}
    return frozenset(keys)


def _without_removed_keys(data: dict, source: str | Path) -> dict:
    out, refused = dict(data), []
    for section, keys in REMOVED_KEYS.items():
        if not isinstance(out.get(section), dict):
            continue
        out[section] = dict(out[section])
        for key, kept in keys.items():
            if key in out[section] and out[section].pop(key) != kept:
                refused.append(f"{section}.{key}: {data[section][key]!r} (only {kept!r} remains)")
    if refused:
        raise ConfigError(f"{source}: made with options this s4al no longer has: {'; '.join(refused)}")
    return out


def _section_of(field) -> type[BaseModel] | None:
    """The config model a field holds, if it is a section (train, dataset.synthetic, ...)."""
    kind = field.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _missing_keys(model: type[BaseModel], data: dict, sections_only: bool, prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        nested = _section_of(field) is not None
        if name == "config_version" or (sections_only and not nested):
            continue
        if name not in data:
            missing.append(prefix + name)
        elif nested and isinstance(data[name], dict):
            missing += _missing_keys(field.annotation, data[name], sections_only, f"{prefix}{name}.")
    return missing


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The config model that holds the key at `loc` (RunConfig for a top-level key)."""
    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        model = _section_of(field) if field is not None else None
        if model is None:
            return None
    return model


def _unknown_key(loc: tuple) -> str:
    """What to say of a key no section has: the close names of its section, or the sections that
    hold a key of that name (`epochs` for `train.epochs`)."""
    name, section = str(loc[-1]), _section_at(loc)
    prefix = "".join(f"{part}." for part in loc[:-1])
    close = [prefix + key for key in difflib.get_close_matches(name, list(section.model_fields) if section else [])]
    if len(loc) == 1:
        close += [f"{key}.{name}" for key, field in RunConfig.model_fields.items()
                  if (holder := _section_of(field)) and name in holder.model_fields]
    return "unknown key" + (f" (did you mean {' or '.join(close[:3])}?)" if close else "")


def _problem(error: dict) -> str:
    """One validation error as the user should read it."""
    if error["type"] == "extra_forbidden":
        return _unknown_key(error["loc"])
    said = error["ctx"]["error"] if error["type"] == "value_error" else error["msg"]  # without "Value error, "
    if error["type"] == "tuple_type":
        said += ", given as a list such as [360, 480]"
    return said


def _validated(file_data: dict, path: str | Path, overrides: dict | None = None) -> RunConfig:
    overrides = overrides or {}
    try:
        return RunConfig.model_validate(merge_overrides(file_data, overrides))
    except ValidationError as err:
        file_alone_valid = bool(overrides) and _valid(file_data)  # then a section's own check failed for --set
        problems, in_file = [], False
        for e in err.errors():
            unknown, at = e["type"] == "extra_forbidden", _dotted(e["loc"])
            keys = _set_keys(overrides, e["loc"])
            # a section's own check reads the file's keys too: blamed on --set where the file alone passes
            by_set = file_alone_valid or (bool(keys) if unknown else keys == [at])
            in_file |= not by_set
            named = ", ".join(f"--set {key}" for key in ([at] if unknown or not keys else keys)) if by_set else at
            problems.append(f"{named}: {_problem(e)}")
        where = f"{path}: invalid config" if in_file else "invalid setting"  # the file is not at fault
        raise ConfigError(f"{where}: {'; '.join(problems)}") from None


def _valid(data: dict) -> bool:
    try:
        RunConfig.model_validate(data)
    except ValidationError:
        return False
    return True


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top)"


def _set_keys(overrides: dict, loc: tuple) -> list[str]:
    """The --set keys at the error location `loc`: that key (also where `loc` lies inside a value
    --set gave, such as an item of its list), or those given in the section `loc` names; [] if none."""
    node = overrides
    for part in loc:
        if not isinstance(node, dict):
            break
        if part not in node:
            return []
        node = node[part]
    if isinstance(node, dict):
        return list(flattened(node, "".join(f"{part}." for part in loc)))
    return [_dotted(loc)]


YAML_NULLS = ("null", "Null", "NULL", "~", "")


def parse_override(items: list[str]) -> dict:
    """['train.epochs=3', 'ssl.enabled=false'] -> nested dict, values parsed as YAML, but for the keys
    that hold a name, a path or one of named choices: their text as given (YAML 1.1 would read
    `2024_01_05` as a number, `0755` as octal, `off` as false and cut a path at ` #`), null apart."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        text, nullable = _holds_text(key)
        if text and raw in YAML_NULLS and not nullable:
            raise ConfigError(f"--set {key}: {raw or 'an empty value'} is not allowed, it needs a value "
                              f"(quote it, --set \"{key}='{raw}'\", for that text)")
        if text and raw not in YAML_NULLS:
            values[key] = raw[1:-1] if len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
            continue
        try:
            values[key] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot read {raw!r} ({getattr(err, 'problem', None) or err}); "
                              "quote a text value, e.g. --set \"key='text'\"") from None
    return nested(values)


def _holds_text(key: str) -> tuple[bool, bool]:
    """(whether the config key `key` holds a name, a path or one of named choices; whether it may be null)."""
    section, _, name = key.partition(".")
    model = RunConfig.model_fields.get(section)
    kind = getattr(model, "annotation", None)
    field = kind.model_fields.get(name) if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    if field is None:
        return False, False
    kinds = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else (field.annotation,)
    values = [kind for kind in kinds if kind is not type(None)]
    text = bool(values) and all(kind in (str, Path) or (get_origin(kind) is Literal and all(
        isinstance(choice, str) for choice in get_args(kind))) for kind in values)
    return text, len(values) < len(kinds)


# The ssl keys a training reads with ssl.enabled false too: the mean teacher, which is evaluated and
# scores the pool, follows the student in every training.
READ_WITHOUT_SSL = ("ssl.enabled", "ssl.ema_momentum")
# A key that does nothing unless another has a value: key -> (that key, its values, as said in a note).
NEEDS = {
    "active.global_budget": ("active.selection", ("global",), "global"),
    "active.initial_fraction": ("active.initial", ("random",), "random"),
    "active.regions_per_image": ("active.selection", ("per_image",), "per_image"),
    "ssl.balanced_classmix": ("ssl.replay", (True,), "true"),  # it mixes the replay batch in
    "ssl.replay_size": ("ssl.replay", (True,), "true"),
    "ssl.class_normalised_confidence": ("ssl.confidence_weighting", (True,), "true"),
    "ssl.alignment_target": ("ssl.distribution_alignment", ("probabilities", "argmax"), "probabilities or argmax"),
    "train.cuda_graphs": ("train.fast", ("auto", "on"), "auto or on"),
}
CUDA_ONLY = ("train.amp", "train.cuda_graphs")


def inert_keys(cfg: RunConfig, supervised: bool = False) -> dict[str, str]:
    """The keys the config's other values make do nothing, each with why ("with ssl.enabled: false");
    `supervised`: for `s4al train`, which trains on the labelled images alone and asks for nothing."""
    flat = flat_config(cfg)
    reasons = {}
    for key in flat:
        if supervised and (key.startswith("active.") or key.startswith("ssl.") and key != "ssl.ema_momentum"):
            reasons[key] = "in s4al train, which trains on the labelled images alone (s4al run learns from the pool)"
        elif key.startswith("ssl.") and key not in READ_WITHOUT_SSL and not cfg.ssl.enabled:
            reasons[key] = "with ssl.enabled: false"
        elif key in NEEDS and flat[NEEDS[key][0]] not in NEEDS[key][1]:
            needed, _, said = NEEDS[key]
            value = flat[needed]
            shown = str(value).lower() if isinstance(value, bool) else value  # as YAML writes it
            reasons[key] = f"unless {needed} is {said} (it is {shown})"
        elif key in CUDA_ONLY and cfg.train.device == "cpu":
            reasons[key] = "with train.device: cpu"
        elif key.startswith("dataset.synthetic.") and cfg.dataset.name != "synthetic":
            reasons[key] = f"unless dataset.name is synthetic (it is {cfg.dataset.name})"
    return reasons


def inert_settings(cfg: RunConfig, overrides: dict, supervised: bool = False) -> list[str]:
    """Notes on the keys of `overrides` (what a user set) that the config's other values (or `s4al
    train`: `supervised`) make do nothing: a setting that looks taken but is not."""
    reasons = inert_keys(cfg, supervised)
    return [f"{key} does nothing {reasons[key]}" for key in sorted(flattened(overrides)) if key in reasons]


def run_differences(a: RunConfig, b: RunConfig, may_differ: Collection[str] = ()) -> list[str]:
    """The keys of config_differences that change what a run computes: not those inert in both
    (inert_keys), nor train.fast where both run the loader path (auto and off on a CPU)."""
    inert = inert_keys(a).keys() & inert_keys(b).keys()
    loader_path = all(cfg.train.device == "cpu" and cfg.train.fast != "on" for cfg in (a, b))
    return [key for key in config_differences(a, b, may_differ)
            if key not in inert and not (key == "train.fast" and loader_path)]


def cold_start_notes(cfg: RunConfig) -> list[str]:
    """Where the cold start lasts a whole cycle of an active-learning run: that cycle trains on the
    labelled images alone, since the pool stream, which carries the pseudo labels and the answered
    regions, starts after it."""
    if not cfg.ssl.enabled:
        return []
    cold = cfg.ssl.cold_start_epochs
    covered = [cycle for cycle in range(cfg.active.cycles + 1) if cfg.cycle_epochs(cycle) <= cold]
    if not covered:
        return []
    which = ("every cycle" if len(covered) == cfg.active.cycles + 1
             else f"cycle {covered[0]}" if len(covered) == 1 else f"cycles {first_of(list(map(str, covered)))}")
    return [f"ssl.cold_start_epochs {cold} lasts the whole of {which}: trained on the labelled images alone, "
            "without pseudo labels or the answered regions (those train with the pool images, after the cold start)"]


def replay_notes(cfg: RunConfig) -> list[str]:
    """Where the replay batch (Balanced ClassMix) starts in no cycle of an active-learning run: from
    ssl.balanced_from_cycle on, once ssl.balanced_from_epoch and the cold start are over."""
    s = cfg.ssl
    if not (s.enabled and s.replay):
        return []
    start = max(s.balanced_from_epoch, s.cold_start_epochs)
    cycles = range(s.balanced_from_cycle, cfg.active.cycles + 1)
    if any(cfg.cycle_epochs(cycle) > start for cycle in cycles):
        return []
    when = (f"ssl.balanced_from_cycle {s.balanced_from_cycle} is after the last cycle ({cfg.active.cycles})"
            if not cycles else f"no cycle from ssl.balanced_from_cycle {s.balanced_from_cycle} on trains more than "
            f"{start} epochs (ssl.balanced_from_epoch {s.balanced_from_epoch}, the cold start "
            f"{s.cold_start_epochs}; the last cycle trains {cfg.cycle_epochs(cfg.active.cycles)})")
    return [f"{when}: no replay batch and no Balanced ClassMix in this run"]


def check_answers_train(cfg: RunConfig) -> None:
    """Refuses a run that asks for regions but whose cold start lasts every cycle after the asking: no
    model would ever train with the answered regions (they come in with the pool images, after the
    cold start). Images bought whole train with the labelled ones, from the start."""
    cold, cycles = cfg.ssl.cold_start_epochs, cfg.active.cycles
    if (not cfg.ssl.enabled or cfg.active.level == "image" or cycles < 1
            or any(cfg.cycle_epochs(c) > cold for c in range(1, cycles + 1))):
        return
    longest = max(cfg.cycle_epochs(c) for c in range(1, cycles + 1))
    raise ConfigError(f"ssl.cold_start_epochs {cold} lasts the whole of every cycle that would train with the "
                      f"answered regions (cycles 1 to {cycles}, at most {longest} epochs each): no model would learn "
                      f"from them; set ssl.cold_start_epochs below {longest} (--set ssl.cold_start_epochs=0: none)")


def nested(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}; a key given both whole and key by key ("a" and "a.b") is refused,
    in either order (a later whole value would drop the keys before it)."""
    for key in flat:
        parts = key.split(".")
        for prefix in (".".join(parts[:depth]) for depth in range(1, len(parts))):
            if prefix in flat:
                raise ConfigError(f"{key}: {prefix} is set to {flat[prefix]!r} as well; "
                                  f"give {prefix} whole or key by key, not both")
    out: dict = {}
    for key, value in flat.items():
        *sections, name = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return out


def flattened(tree: dict, prefix: str = "", leaves: Collection[str] = ()) -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; a dict at a key of `leaves` is that key's value."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out |= flattened(value, f"{name}.", leaves) if isinstance(value, dict) and name not in leaves else {name: value}
    return out


def flat_config(cfg: RunConfig) -> dict:
    """Every key's value by its dotted name: {"train.lr": 0.01, "active.metric_options": {}, ...}."""
    return flattened(cfg.model_dump(mode="json"), leaves=leaf_keys())


def config_differences(a: RunConfig, b: RunConfig, may_differ: Collection[str] = ()) -> list[str]:
    """The keys ("train.lr") where `a` and `b` differ, but for those in `may_differ`; sorted."""
    flat_a, flat_b = flat_config(a), flat_config(b)
    return sorted(key for key in flat_a.keys() | flat_b.keys()
                  if key not in may_differ and flat_a.get(key) != flat_b.get(key))


def config_text(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_digest(path: Path) -> str:
    """The digest of what the config file at `path` says, but for the keys a resumed run may save
    (SAVED_ON_RESUME) and how it is written (key order, comments)."""
    return _settings_digest(_read_yaml(path))


def written_config_digest(cfg: RunConfig) -> str:
    """config_digest of the file save_config(cfg) writes, before it is written."""
    return _settings_digest(yaml.safe_load(config_text(cfg)))


def _settings_digest(data: dict) -> str:
    kept = {key: value for key, value in flattened(data).items() if key not in SAVED_ON_RESUME}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's content, read in chunks."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def save_config(cfg: RunConfig, path: Path) -> None:
    with atomic_write(Path(path), "w") as file:
        file.write(config_text(cfg))
