import pytest
import yaml

from s4al.config import PRESETS, ConfigError, load_config, load_run_config, parse_override, save_config, saved_config


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    cfg = load_config(name)
    assert cfg.train.lr == pytest.approx(1e-2)
    assert cfg.model.output_stride == 16


def test_camvid_preset_is_table_s2():
    cfg = load_config("camvid")
    assert (cfg.train.epochs, cfg.train.iters_per_epoch, cfg.train.batch_size) == (100, 50, 4)
    assert (cfg.ssl.replay_size, cfg.ssl.cold_start_epochs, cfg.active.cycles) == (50, 10, 2)
    assert (cfg.active.region_size, cfg.active.regions_per_image) == (30, 4)
    assert cfg.active.final_cycle_epoch_multiplier == 2


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train\.epoch"):
        load_config(path)


def test_bad_value_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(path)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="global_budget"):
        load_config("demo", {"active": {"selection": "global"}})
    with pytest.raises(ConfigError, match="coreset"):
        load_config("demo", {"active": {"metric": "coreset", "level": "region"}})
    with pytest.raises(ConfigError, match="dataset.root"):
        load_config("demo", {"dataset": {"name": "camvid"}})


def test_not_a_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_and_round_trip(tmp_path):
    overrides = parse_override(["train.epochs=3", "ssl.enabled=false", "train.scale_range=[0.5, 1.0]"])
    cfg = load_config("demo", overrides)
    assert cfg.train.epochs == 3 and cfg.ssl.enabled is False and cfg.train.scale_range == (0.5, 1.0)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(["epochs"])


def test_a_saved_run_config_keeps_the_learner_it_was_made_with(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(load_config("demo"), path)
    today = load_run_config(path)
    assert today == load_config("demo")  # a complete dump: nothing filled in
    assert (today.ssl.distribution_alignment, today.ssl.class_normalised_confidence) == ("argmax", True)  # the default
    data = yaml.safe_load(path.read_text())
    del data["ssl"]["class_normalised_confidence"]  # written before the key existed
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
