import re

import pytest
import yaml

from s4al.acquisition.scores import SCORE_FUNCTIONS
from s4al.config import (
    CONFIG_VERSION, PRESETS, ConfigError, cold_start_notes, inert_settings, load_config, load_run_config, parse_override, run_differences,
    replay_notes, save_config, saved_config,
)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    cfg = load_config(name)
    assert cfg.train.lr == pytest.approx(1e-2)


def test_camvid_preset_is_table_s2():
    cfg = load_config("camvid")
    assert (cfg.train.epochs, cfg.train.iters_per_epoch, cfg.train.batch_size) == (100, 50, 4)
    assert (cfg.ssl.replay_size, cfg.ssl.cold_start_epochs, cfg.active.cycles) == (50, 10, 2)
    assert (cfg.active.region_size, cfg.active.regions_per_image) == (30, 4)
    assert cfg.active.final_cycle_epoch_multiplier == 2
    # the paper's text (EMA momentum 0.99, eta's threshold 0.97); the authors' code (3 head and 2 tail
    # classes, Balanced ClassMix from epoch 30 of cycle 1); head = 80% of the labelled pixels (docs/design.md)
    s = cfg.ssl
    assert (s.confidence_threshold, s.ema_momentum, s.n_head, s.n_tail, s.head_share, s.balanced_from_cycle,
            s.balanced_from_epoch) == (0.97, 0.99, 3, 2, 0.8, 1, 30)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train\.epoch"):
        load_config(path)


@pytest.mark.parametrize("given, said", [
    (["train.epoch=3"], "--set train.epoch: unknown key (did you mean train.epochs?)"),
    (["epochs=3"], "--set epochs: unknown key (did you mean train.epochs?)"),
    (["trian.lr=0.1"], "--set trian: unknown key (did you mean train?)"),
    (["train.crop_size=360x480"], "--set train.crop_size: Input should be a valid tuple, given as a list such as [360, 480]"),
    (["train.crop_size=[0,10]"], "--set train.crop_size.0: Input should be greater than or equal to 1"),
    (["train.lr=.inf"], "--set train.lr: Input should be a finite number"),
    (["active.final_cycle_epoch_multiplier=.nan"], "--set active.final_cycle_epoch_multiplier: Input should be a finite"),
])
def test_a_mistyped_key_is_offered_the_close_ones_and_a_bad_value_says_the_form_it_takes(given, said):
    with pytest.raises(ConfigError, match="^invalid setting: " + re.escape(said)):  # the preset's file not blamed
        load_config("demo", parse_override(given))


@pytest.mark.parametrize("given, said", [
    (["dataset.name=folder"], "--set dataset.name: dataset.root is required for dataset 'folder'"),
    (["active.metric=coreset"], "--set active.metric: active.metric 'coreset' is image-level only"),
    (["active.metric_options.temperature=2"],
     "--set active.metric_options.temperature: active.metric 'entropy' takes no option 'temperature'"),
    (["dataset.root=my_data"], "--set dataset.root: dataset.root my_data with dataset 'synthetic', which is "
                               "generated and reads no folder: set dataset.name (folder for your own images)"),
])
def test_a_sections_own_check_failing_for_set_alone_names_the_set_keys_not_the_preset(given, said):
    with pytest.raises(ConfigError, match="^invalid setting: " + re.escape(said)):
        load_config("demo", parse_override(given))


def test_a_section_the_file_leaves_incomplete_is_the_files_fault_though_set_gave_another_of_its_keys(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("dataset:\n  name: folder\n")  # no root
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}: invalid config: dataset: dataset.root is required")):
        load_config(str(config), parse_override(["dataset.val_split=val"]))


def test_bare_on_off_and_numbers_as_names_read_as_the_user_meant(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config("demo", parse_override(["train.fast=off", "dataset.name=folder", "dataset.root=~/data",
                                              "dataset.val_split=2019", "model.weights=1234"]))
    assert cfg.train.fast == "off" and load_config("demo", parse_override(["train.fast=on"])).train.fast == "on"
    assert (cfg.dataset.root, cfg.dataset.val_split, cfg.model.weights) == (tmp_path / "data", "2019", "1234")


def test_a_key_given_twice_in_a_config_file_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 3\n  crop_size: [360, 480]\nssl:\n  enabled: true\ntrain:\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read config: 'train' is given twice (first on "
                                                    f"line 1); the second would replace the first silently\n  in "
                                                    f"\"{path}\", line 6")):
        load_config(path)
    path.write_text("train:\n  epochs: 3\n  epochs: 50\n")
    with pytest.raises(ConfigError, match="'epochs' is given twice \\(first on line 2\\)"):
        load_config(path)
    # a merge key's keys may be given again: that is what merging is for
    path.write_text("dataset:\n  synthetic: &small {num_train: 20, height: 48, width: 64}\n"
                    "train:\n  crop_size: [48, 64]\nx_other: &wide\n  <<: *small\n  width: 96\n")
    with pytest.raises(ConfigError, match="x_other: unknown key"):  # read whole, then validated
        load_config(path)


def test_bad_value_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(path)


@pytest.mark.parametrize("overrides, named", [
    ({"train": {"crop_size": [0, 0]}}, "train.crop_size.0: Input should be greater than or equal to 1"),
    ({"train": {"crop_size": [48, -8]}}, "train.crop_size.1: Input should be greater than or equal to 1"),
    ({"dataset": {"resize": [0, -3]}}, "dataset.resize.0: Input should be greater than or equal to 1"),
    ({"train": {"device": "gpu7"}}, "train.device: String should match pattern"),
    ({"train": {"device": "cuda:x"}}, "train.device: String should match pattern"),
])
def test_an_image_side_below_one_pixel_or_an_unknown_device_is_refused_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config("demo", overrides)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:3"])
def test_the_devices_a_config_may_name(device):
    assert load_config("demo", {"train": {"device": device}}).train.device == device


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="global_budget"):
        load_config("demo", {"active": {"selection": "global"}})
    with pytest.raises(ConfigError, match="^invalid setting: --set active.metric, --set active.level: active.metric 'coreset' is "
                                        "image-level only: set active.level: image$"):
        load_config("demo", {"active": {"metric": "coreset", "level": "region"}})
    with pytest.raises(ConfigError, match="dataset.root"):
        load_config("demo", {"dataset": {"name": "camvid"}})


def test_an_unknown_metric_is_refused_naming_every_valid_one():
    with pytest.raises(ConfigError, match="active.metric") as refused:
        load_config("demo", {"active": {"metric": "bald"}})
    assert "active.metric: unknown acquisition metric 'bald'; valid: " in str(refused.value)  # no "Value error, "
    for name in ("entropy", "least_confidence", "margin", "random", "coreset"):
        assert name in str(refused.value)


@pytest.mark.parametrize("name", [*SCORE_FUNCTIONS, "random"])
def test_every_registered_score_is_a_valid_metric_at_both_levels(name):
    assert load_config("demo", {"active": {"metric": name}}).active.metric == name
    assert load_config("demo", {"active": {"metric": name, "level": "image"}}).active.metric == name


def test_not_a_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_a_split_measured_on_is_not_the_training_split():
    for key in ("val_split", "test_split"):
        with pytest.raises(ConfigError, match=f"dataset.{key} is the training split 'train'"):
            load_config("demo", parse_override([f"dataset.{key}=train"]))
    assert load_config("demo", parse_override(["dataset.train_split=val", "dataset.val_split=train"]))


def test_overrides_and_round_trip(tmp_path):
    overrides = parse_override(["train.epochs=3", "ssl.enabled=false", "train.scale_range=[0.5, 1.0]"])
    cfg = load_config("demo", overrides)
    assert cfg.train.epochs == 3 and cfg.ssl.enabled is False and cfg.train.scale_range == (0.5, 1.0)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(["epochs"])
    with pytest.raises(ConfigError, match=r"^train\.epochs: train is set to 3 as well; give train whole or key by key"):
        parse_override(["train=3", "train.epochs=1"])
    with pytest.raises(ConfigError, match=r"^ssl\.a\.b: ssl\.a is set to 'x' as well"):
        parse_override(["ssl.a=x", "ssl.a.b=1"])
    for given in (["train.epochs=3", "train={lr: 0.1}"], ["train={lr: 0.1}", "train.epochs=3"]):  # a whole value
        with pytest.raises(ConfigError, match=r"^train\.epochs: train is set to \{'lr': 0\.1\} as well"):
            parse_override(given)  # after a key would drop it; before it, which wins is unclear


def test_a_set_name_or_path_is_its_text_and_a_value_yaml_cannot_read_is_refused_naming_its_key():
    """YAML 1.1 reads 2024_01_05 as 20240105, 0755 as 493, off as false and cuts at ' #'."""
    given = parse_override(["dataset.root=2024_01_05", "model.weights=0755", "dataset.val_split=off",
                            "dataset.test_split='a #1'", "dataset.train_split=/data/run #1", "train.fast=off",
                            "model.weights=null", "train.crop_size=[360, 480]", "ssl.enabled=no"])
    assert given == {"dataset": {"root": "2024_01_05", "val_split": "off", "test_split": "a #1",
                                 "train_split": "/data/run #1"},
                     "model": {"weights": None}, "train": {"fast": "off", "crop_size": [360, 480]},
                     "ssl": {"enabled": False}}
    for key in ("dataset.train_split", "dataset.val_split", "active.metric"):  # names that cannot be null
        for value in ("null", "~", ""):
            with pytest.raises(ConfigError, match=rf"^--set {key}: .* is not allowed, it needs a value"):
                parse_override([f"{key}={value}"])
    assert parse_override(["dataset.train_split='null'"]) == {"dataset": {"train_split": "null"}}
    for value in ("[360,", "@data", "`x", "*x"):
        with pytest.raises(ConfigError, match=rf"^--set train.crop_size: cannot read {re.escape(repr(value))} "):
            parse_override([f"train.crop_size={value}"])


def test_a_replay_that_starts_in_no_cycle_is_named():
    """camvid: Balanced ClassMix from epoch 30 of cycle 1 on; the final cycle trains twice the epochs."""
    assert replay_notes(load_config("camvid")) == []
    assert replay_notes(load_config("camvid", {"train": {"epochs": 16}})) == []  # the last cycle's 32: 30, 31 replay
    assert replay_notes(load_config("camvid", {"train": {"epochs": 15}})) == [  # epochs 0 to 29 of the last
        "no cycle from ssl.balanced_from_cycle 1 on trains more than 30 epochs (ssl.balanced_from_epoch 30, the cold "
        "start 10; the last cycle trains 30): no replay batch and no Balanced ClassMix in this run"]
    assert replay_notes(load_config("camvid", {"ssl": {"balanced_from_cycle": 3}})) == [
        "ssl.balanced_from_cycle 3 is after the last cycle (2): no replay batch and no Balanced ClassMix in this run"]
    assert replay_notes(load_config("camvid", {"ssl": {"replay": False, "balanced_from_cycle": 3}})) == []


def test_a_runs_config_of_an_earlier_version_given_to_config_is_read_as_the_run_ran(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(load_config("demo"), path)
    data = yaml.safe_load(path.read_text())
    del data["active"]["metric_options"], data["train"]["cuda_graphs"]  # as version 2 wrote it
    path.write_text(yaml.safe_dump({**data, "config_version": 2}))
    read = load_config(path)
    assert read == load_run_config(path) and read.train.cuda_graphs is False  # as the run ran, not today's True
    with pytest.raises(ConfigError, match=r"seed: Input should be greater than or equal to 0"):
        load_config("demo", {"seed": -1})


def test_a_saved_run_config_keeps_the_learner_it_was_made_with(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(load_config("demo"), path)
    today = load_run_config(path)
    assert today == load_config("demo")  # a complete dump: nothing filled in
    assert (today.ssl.distribution_alignment, today.ssl.class_normalised_confidence) == ("argmax", True)  # the default
    data = yaml.safe_load(path.read_text())
    del data["config_version"]  # a version-1 dump, written before versions and before the key existed
    del data["ssl"]["class_normalised_confidence"]
    data["ssl"]["distribution_alignment"] = True  # the old boolean spelling
    path.write_text(yaml.safe_dump(data))
    ssl = load_run_config(path).ssl
    assert (ssl.distribution_alignment, ssl.class_normalised_confidence) == ("probabilities", False)
    assert saved_config(data, "a checkpoint's copy").ssl == ssl
    assert load_config(path).ssl.class_normalised_confidence is True  # a user's config file: today's defaults
    del data["ssl"]["distribution_alignment"]
    path.write_text(yaml.safe_dump(data))
    assert load_run_config(path, {"ssl": {"class_normalised_confidence": True}}).ssl.model_dump() == {
        **ssl.model_dump(), "distribution_alignment": "off", "class_normalised_confidence": True}


def test_a_saved_config_cut_short_is_refused_not_filled_with_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(load_config("demo", {"active": {"annotator": "external"}}), path)
    lines = path.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if line.startswith("active:"))
    path.write_text("".join(lines[:cut]))  # the file cut at a line boundary: the active section lost
    with pytest.raises(ConfigError, match=r"config.yaml: incomplete saved config, missing active;"):
        load_run_config(path)
    path.write_text("".join(lines[:-1]))  # one key lost
    last_key = lines[-1].split(":")[0].strip()
    with pytest.raises(ConfigError, match=rf"missing active\.{last_key}"):
        load_run_config(path)


def test_a_version_1_config_missing_a_whole_section_is_refused(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(load_config("demo").model_dump(mode="json")))
    del data["config_version"], data["active"]
    with pytest.raises(ConfigError, match="missing active"):
        saved_config(data, "old/config.yaml")


def test_version_1_configs_run_the_learner_of_their_time():
    data = load_config("demo").model_dump(mode="json")
    del data["config_version"]
    for key in ("distribution_alignment", "class_normalised_confidence", "alignment_target", "freeze_bn_on_unlabelled"):
        del data["ssl"][key]
    del data["train"]["fast"], data["train"]["cuda_graphs"], data["active"]["initial"]
    cfg = saved_config(data, "old/config.yaml")
    assert cfg.config_version == CONFIG_VERSION
    assert cfg.train.cuda_graphs is False
    assert (cfg.ssl.distribution_alignment, cfg.ssl.class_normalised_confidence, cfg.ssl.alignment_target,
            cfg.ssl.freeze_bn_on_unlabelled) == ("off", False, "labelled", False)
    assert (cfg.train.fast, cfg.active.initial) == ("off", "random")


def test_a_version_2_run_resumes_as_it_ran_and_a_version_3_dump_lacking_that_key_is_damaged(tmp_path):
    """Version 3 added train.cuda_graphs: a version-2 run folder (made before it) resumes with its
    passes eager, as they ran; a version-3 dump without it lost a line."""
    data = load_config("demo").model_dump(mode="json")
    del data["train"]["cuda_graphs"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data | {"config_version": 2}))
    cfg = load_run_config(path)
    assert cfg.config_version == CONFIG_VERSION and cfg.train.cuda_graphs is False
    assert cfg.model_dump(exclude={"train"}) == load_config("demo").model_dump(exclude={"train"})
    path.write_text(yaml.safe_dump(data | {"config_version": 3}))
    with pytest.raises(ConfigError, match=r"incomplete saved config, missing train\.cuda_graphs;"):
        load_run_config(path)
    del data["train"]["fast"]
    path.write_text(yaml.safe_dump(data | {"config_version": 2}))  # a key version 2 already had
    with pytest.raises(ConfigError, match=r"missing train\.fast;"):
        load_run_config(path)


def test_a_version_3_run_scores_without_options_and_a_version_4_dump_lacking_them_is_damaged(tmp_path):
    """Version 4 added active.metric_options, a key whose value is a mapping: a version-3 run folder
    resumes with none; a version-4 dump without the key lost a line."""
    data = load_config("demo").model_dump(mode="json")
    del data["active"]["metric_options"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data | {"config_version": 3}))
    assert load_run_config(path) == load_config("demo")
    path.write_text(yaml.safe_dump(data | {"config_version": 4}))
    with pytest.raises(ConfigError, match=r"incomplete saved config, missing active\.metric_options;"):
        load_run_config(path)


def test_a_config_from_a_newer_version_or_of_no_version_number_is_refused():
    data = load_config("demo").model_dump(mode="json")
    for version in (CONFIG_VERSION + 1, 0, 2.0, True, "3"):
        with pytest.raises(ConfigError, match=f"new/config.yaml: config_version {version!r}; this s4al reads"):
            saved_config(data | {"config_version": version}, "new/config.yaml")


def test_set_errors_name_the_set_option_not_the_preset():
    with pytest.raises(ConfigError) as refused:
        load_config("demo", parse_override(["train.lr=-1", "train.bogus=1"]))
    assert "--set train.lr" in str(refused.value) and "--set train.bogus" in str(refused.value)


def test_save_config_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old: true\n")
    save_config(load_config("demo"), path)
    assert load_run_config(path) == load_config("demo")
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_removed_options_are_dropped_at_the_value_kept_and_refused_at_any_other():
    data = load_config("demo").model_dump(mode="json")
    del data["config_version"]
    old = {**data, "model": {**data["model"], "encoder": "mobilenet_v2", "output_stride": 16, "channels_last": True},
           "ssl": {**data["ssl"], "mask_unconfident": False, "teacher_train_mode": False}}
    assert saved_config(old, "old/config.yaml") == saved_config(data, "old/config.yaml")
    old["ssl"]["mask_unconfident"] = True
    old["model"]["output_stride"] = 8
    with pytest.raises(ConfigError, match=r"no longer has: model\.output_stride: 8 .*ssl\.mask_unconfident: True"):
        saved_config(old, "old/config.yaml")
    with pytest.raises(ConfigError, match=r"train\.sync_bn"):
        load_config("demo", {"train": {"sync_bn": True}})  # a user's file: an unknown key


def test_a_cold_start_lasting_whole_cycles_is_named_with_what_they_do_not_train_on():
    def notes(**sections):  # demo: 2 cycles of 6 epochs and a final one of 12, a cold start of 2 epochs
        return cold_start_notes(load_config("demo", sections))

    said = ": trained on the labelled images alone, without pseudo labels or the answered regions (those train with " \
           "the pool images, after the cold start)"
    assert notes(train={"epochs": 2}) == [f"ssl.cold_start_epochs 2 lasts the whole of cycles 0, 1{said}"]
    assert notes(train={"epochs": 5}, ssl={"cold_start_epochs": 6}) == [
        f"ssl.cold_start_epochs 6 lasts the whole of cycles 0, 1{said}"]  # the last: 10 epochs
    assert notes(train={"epochs": 5}, ssl={"cold_start_epochs": 10}) == [
        f"ssl.cold_start_epochs 10 lasts the whole of every cycle{said}"]
    assert notes(active={"cycles": 1, "final_cycle_epoch_multiplier": 0.25}) == [
        f"ssl.cold_start_epochs 2 lasts the whole of cycle 1{said}"]  # round(6 x 0.25) = 2 epochs
    assert notes(train={"epochs": 3}) == notes() == notes(active={"cycles": 4}) == []
    assert notes(train={"epochs": 2}, ssl={"enabled": False}) == []  # no pool stream to wait for
    assert all(cold_start_notes(load_config(preset)) == [] for preset in PRESETS)


def test_a_setting_the_other_values_make_do_nothing_is_named():
    cfg = load_config("demo", {"ssl": {"confidence_weighting": False, "class_normalised_confidence": True,
                                       "distribution_alignment": "off"}})
    given = {"active": {"global_budget": 50}, "ssl": {"class_normalised_confidence": True, "alignment_target":
                                                       "labelled", "confidence_weighting": False}}
    assert inert_settings(cfg, given) == [
        "active.global_budget does nothing unless active.selection is global (it is per_image)",
        "ssl.alignment_target does nothing unless ssl.distribution_alignment is probabilities or argmax (it is off)",
        "ssl.class_normalised_confidence does nothing unless ssl.confidence_weighting is true (it is false)",
    ]
    no_ssl = {"ssl": {"enabled": False, "replay": True, "ema_momentum": 0.9}}  # the teacher follows every training
    assert inert_settings(load_config("demo", no_ssl), no_ssl) == ["ssl.replay does nothing with ssl.enabled: false"]
    taken = {"active": {"selection": "global", "global_budget": 50}}
    assert inert_settings(load_config("demo", taken), taken) == []
    supervised = {**taken, "ssl": {"replay": False, "ema_momentum": 0.9}, "train": {"epochs": 3}}  # s4al train
    alone = "in s4al train, which trains on the labelled images alone (s4al run learns from the pool)"
    assert inert_settings(load_config("demo", supervised), supervised, supervised=True) == [
        f"active.global_budget does nothing {alone}", f"active.selection does nothing {alone}",
        f"ssl.replay does nothing {alone}"]
    own = {"active": {"initial": "labelled", "annotator": "external", "initial_fraction": 0.2}}
    assert inert_settings(load_config("demo", own), own) == [
        "active.initial_fraction does nothing unless active.initial is random (it is labelled)"]
    no_replay = {"ssl": {"replay": False, "balanced_classmix": True, "replay_size": 8},
                 "active": {"selection": "global", "global_budget": 50, "regions_per_image": 2}}
    assert inert_settings(load_config("demo", no_replay), no_replay) == [
        "active.regions_per_image does nothing unless active.selection is per_image (it is global)",
        "ssl.balanced_classmix does nothing unless ssl.replay is true (it is false)",
        "ssl.replay_size does nothing unless ssl.replay is true (it is false)",
    ]
    on_cpu = {"train": {"device": "cpu", "amp": False, "fast": "off", "cuda_graphs": False}}
    assert inert_settings(load_config("demo", on_cpu), on_cpu) == [
        "train.amp does nothing with train.device: cpu",
        "train.cuda_graphs does nothing unless train.fast is auto or on (it is off)",
    ]


def test_runs_differ_only_in_keys_that_change_what_they_compute():
    def config(**sections):
        return load_config("demo", {"train": {"device": "cpu"}, **sections})

    supervised = config(ssl={"enabled": False})
    assert run_differences(supervised, config(ssl={"enabled": False, "replay_size": 2, "n_head": 1})) == []
    assert run_differences(config(), config(ssl={"replay_size": 2})) == ["ssl.replay_size"]  # read with ssl on
    assert run_differences(config(ssl={"enabled": False, "replay_size": 2}), config(ssl={"replay_size": 2})) == [
        "ssl.enabled"]  # a key inert in one of them only is not told apart: its value is the same
    assert run_differences(config(train={"device": "cpu", "fast": "off"}), config()) == []  # auto: loaders on a CPU
    assert run_differences(config(train={"device": "cpu", "fast": "on"}), config()) == ["train.fast"]
    on_gpu = load_config("demo", {"train": {"device": "cuda"}})
    assert run_differences(on_gpu, load_config("demo", {"train": {"device": "cuda", "fast": "off"}})) == ["train.fast"]
    assert run_differences(on_gpu, load_config("demo", {"train": {"device": "cuda", "amp": False}})) == ["train.amp"]
    assert run_differences(config(train={"device": "cpu", "amp": False}), config()) == []
    assert run_differences(config(), config(train={"device": "cpu", "lr": 0.5}), may_differ=["train.lr"]) == []


def test_print_config_shows_the_whole_config_a_command_would_run_with_and_makes_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from s4al.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["run", "-c", "camvid", "--set", "train.epochs=7", "--set", "ssl.enabled=false",
                                "--set", "ssl.n_head=2", "--print-config"])
    assert shown.exit_code == 0, shown.output
    printed = yaml.safe_load(shown.output)  # the notes are YAML comments
    assert printed["train"]["epochs"] == 7 and printed["ssl"]["enabled"] is False
    assert printed["train"]["crop_size"] == [360, 480] and printed["active"]["region_size"] == 30  # the preset's
    assert "# note: ssl.n_head does nothing with ssl.enabled: false" in shown.output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(shown.output)
    resumed = runner.invoke(app, ["run", "--resume", "run", "--set", "active.cycles=5", "--print-config"])
    assert resumed.exit_code == 0, resumed.output
    assert yaml.safe_load(resumed.output)["active"]["cycles"] == 5
    assert yaml.safe_load(resumed.output)["train"]["epochs"] == 7
    assert runner.invoke(app, ["train", "-c", "demo", "--set", "train.lr=0.5", "--print-config"]).output.count(
        "lr: 0.5") == 1
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["config.yaml", "run"]
