"""User errors at the command line (s4al/errors.py): input s4al refuses ends a command with one line,
`error: MESSAGE`, and exit status 1; any other exception is a fault and keeps its traceback."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config
from s4al.cli import app
from s4al.config import check_answers_train, load_config, parse_override
from s4al.data import DatasetError
from s4al.data.synthetic import SYNTHETIC_CLASSES
from s4al.errors import user_errors_reported
from s4al.text import counted, first_of, named
from s4al.model import build_model
from s4al.train.checkpoint import save_checkpoint
from test_own_data import CLASSES as OWN_CLASSES, make_dataset, own_config

runner = CliRunner()


def run_command_raising_from(body):
    """The result of a one-command app whose body, under user_errors_reported, is `body()`."""
    probe = typer.Typer()

    @probe.command()
    def fail() -> None:
        with user_errors_reported():
            body()

    return runner.invoke(probe, [])


def run_command_raising(error: Exception):
    def body():
        raise error

    return run_command_raising_from(body)


@pytest.mark.parametrize("error, line", [
    (DatasetError("train/0001.png: corrupt image file"), "error: train/0001.png: corrupt image file\n"),
    (FileNotFoundError(2, "No such file or directory", "answers.json"),
     "error: [Errno 2] No such file or directory: 'answers.json'\n"),
    (PermissionError(13, "Permission denied", "run/.lock"), "error: [Errno 13] Permission denied: 'run/.lock'\n"),
])
def test_a_user_error_is_one_line_and_exit_status_1(error, line):
    result = run_command_raising(error)
    assert (result.exit_code, result.output) == (1, line)
    assert isinstance(result.exception, SystemExit)


def test_an_error_a_rank_other_than_0_prints_names_that_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # started otherwise than by torchrun's agent: no store to agree in
    monkeypatch.setenv("RANK", "1")
    result = run_command_raising(DatasetError("train/0001.png: corrupt image file"))
    assert (result.exit_code, result.output) == (1, "error: rank 1: train/0001.png: corrupt image file\n")


class Unreadable(torch.utils.data.Dataset):
    def __init__(self, error: Exception):
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        raise self.error


@pytest.mark.parametrize("error, line", [
    (DatasetError("data/masks/b.png: label values [7] are outside the valid set [0, 1, 255]"),
     "error: data/masks/b.png: label values [7] are outside the valid set [0, 1, 255]\n"),
    (FileNotFoundError("data/images/c.png: file not found"), "error: data/images/c.png: file not found\n"),
])
def test_a_user_error_in_a_loader_worker_is_its_own_line_without_the_workers_traceback(error, line):
    loader = torch.utils.data.DataLoader(Unreadable(error), num_workers=1)
    result = run_command_raising_from(lambda: next(iter(loader)))
    assert (result.exit_code, result.output) == (1, line)


@pytest.mark.parametrize("fault", [ValueError("Expected 4D input, got 3D"), OSError(5, "Input/output error"),
                                   KeyError("student")])
def test_any_other_exception_keeps_its_traceback(fault):
    result = run_command_raising(fault)
    assert result.exception is fault and result.exc_info[2] is not None
    assert "error:" not in result.output


def test_a_class_list_of_too_many_classes_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    classes = [{"name": f"class{i}", "color": [i, 0, 0]} for i in range(255)]
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": classes}))
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--quiet",
                                 "--set", "dataset.name=folder", "--set", f"dataset.root={root}"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {root / 'classes.yaml'}: invalid class list: classes: ")
    assert "at most 254 items" in result.output


def test_a_failed_download_is_an_error_naming_the_address(tmp_path):
    url = (tmp_path / "no-such-archive.zip").as_uri()
    result = runner.invoke(app, ["download", "camvid", "--to", str(tmp_path / "camvid"), "--url", url])
    assert result.exit_code == 1 and result.output.startswith(f"error: {url}: download failed")
    assert not (tmp_path / "camvid").exists()


@pytest.fixture
def damaged_checkpoint(tmp_path):
    path = tmp_path / "cycle_0.pt"
    path.write_bytes(b"the first bytes of a checkpoint cut short")
    return path


def test_report_on_a_missing_folder_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "no-run"
    result = runner.invoke(app, ["report", str(missing)])
    assert (result.exit_code, result.output) == (1, f"error: {missing}: no such run folder\n")


def test_report_on_a_folder_that_is_not_a_run_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {tmp_path}: not a run folder (no config.yaml)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]  # no report folder made


def test_predict_with_a_damaged_checkpoint_is_an_error_naming_it(tmp_path, damaged_checkpoint):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    result = runner.invoke(app, ["predict", str(damaged_checkpoint), str(image), "--out", str(tmp_path / "masks")])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {damaged_checkpoint}: cannot read checkpoint: ")
    assert not (tmp_path / "masks").exists()


def test_predict_names_a_missing_image_before_it_reads_the_checkpoint(tmp_path, damaged_checkpoint):
    missing = tmp_path / "photo.png"
    result = runner.invoke(app, ["predict", str(damaged_checkpoint), str(missing), "--out", str(tmp_path / "masks")])
    assert (result.exit_code, result.output) == (1, f"error: {missing}: no such image file or folder\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    result = runner.invoke(app, ["predict", str(damaged_checkpoint), str(empty), "--out", str(tmp_path / "masks")])
    assert (result.exit_code, result.output) == (1, f"error: {empty}: no image in this folder (.png, .jpg, .jpeg, "
                                                    ".bmp, .tif, .tiff, .webp; sub-folders are not searched)\n")


@pytest.mark.parametrize("kind", ["damaged", "missing"])
def test_export_of_an_unreadable_checkpoint_is_an_error_naming_it(tmp_path, damaged_checkpoint, kind):
    checkpoint = damaged_checkpoint if kind == "damaged" else tmp_path / "missing.pt"
    result = runner.invoke(app, ["export", str(checkpoint), "--onnx", str(tmp_path / "model.onnx")])
    assert result.exit_code == 1
    problem = "cannot read checkpoint: " if kind == "damaged" else "no such checkpoint\n"
    assert result.output.startswith(f"error: {checkpoint}: {problem}")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("args, option", [  # refused before any of the paths is looked at
    (["report", "run", "--supervised-miou", "most"], "--supervised-miou"),
    (["report", "run", "--supervised-miou", "1.5"], "--supervised-miou"),
    (["export", "cycle_0.pt", "--onnx", "model.onnx", "--network", "ema"], "--network"),
    (["evaluate", "cycle_0.pt", "--network", "ema"], "--network"),
    (["evaluate", "cycle_0.pt", "--batch-size", "0"], "--batch-size"),
    (["export", "cycle_0.pt", "--onnx", "model.onnx", "--height", "100000"], "--height"),  # no 120 GB example input
])
def test_a_bad_option_value_is_a_usage_error_naming_the_option(args, option):
    result = runner.invoke(app, args, env={"COLUMNS": "500"})
    assert result.exit_code == 2 and f"Invalid value for {option}" in result.output.replace("'", "")


def test_a_message_names_the_first_items_and_counts_the_rest():
    assert first_of(["'a'", "'b'"]) == "'a', 'b'"
    assert first_of([f"k{i}" for i in range(8)], limit=3) == "k0, k1, k2 (and 5 more)"
    assert first_of(["x", "y", "z"], limit=2, sep="; ") == "x; y (and 1 more)"


def test_a_new_run_notes_a_setting_that_does_nothing(tmp_path):
    """Before anything is refused or trained: the note names the setting and the one it waits for."""
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--set", "active.global_budget=50",
                                 "--set", "dataset.name=folder", "--set", f"dataset.root={tmp_path / 'nothing'}"],
                           env={"COLUMNS": "500"})
    assert result.exit_code == 1
    assert result.output.startswith("note: active.global_budget does nothing unless active.selection is global "
                                    "(it is per_image)\n")


def test_a_run_whose_cold_start_lasts_its_cycles_is_told_before_it_trains(tmp_path):
    small = ["--set", "train.epochs=1", "--set", "train.iters_per_epoch=1", "--set", "active.cycles=0",
             "--set", "dataset.synthetic.num_train=8", "--set", "dataset.synthetic.num_val=2", "--quiet"]
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), *small], env={"COLUMNS": "500"})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("note: ssl.cold_start_epochs 2 lasts the whole of every cycle: trained on the "
                                    "labelled images alone, without pseudo labels or the answered regions")


def test_a_run_whose_cold_start_lasts_every_cycle_after_it_asks_is_refused_before_it_is_made(tmp_path):
    """Asked regions train with the pool images, after the cold start: lasting every cycle that could
    use them (2 epochs each, the last 2 x 1), it would spend a person's answers on nothing."""
    small = ["--set", "train.epochs=2", "--set", "active.cycles=2", "--set", "active.final_cycle_epoch_multiplier=1"]
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), *small], env={"COLUMNS": "500"})
    assert result.exit_code == 2 and not (tmp_path / "run").exists()  # a usage error, as any setting refused
    assert result.output.endswith(
        "Error: Invalid value for --config/--set: ssl.cold_start_epochs 2 lasts the whole of every cycle that would train with the answered regions "
        "(cycles 1 to 2, at most 2 epochs each): no model would learn from them; set ssl.cold_start_epochs below 2 "
        "(--set ssl.cold_start_epochs=0: none)\n")
    for command in (["run", "--print-config", "--set", "foo"], ["train", "--print-config", "--set", "foo"]):
        unread = runner.invoke(app, command, env={"COLUMNS": "500"})
        assert (unread.exit_code, unread.output.splitlines()[-1]) == (
            2, "Error: Invalid value for --set: override 'foo' must look like section.key=value")
    assert not (tmp_path / "run").exists()
    overrides = parse_override(["train.epochs=2", "active.cycles=2", "active.final_cycle_epoch_multiplier=1"])
    check_answers_train(load_config("demo", {**overrides, "active": {**overrides["active"], "level": "image"}}))


def saved_checkpoint(path, cfg, classes) -> None:
    """A checkpoint in the trainer's format, of a randomly initialised network (no training needed)."""
    torch.manual_seed(0)
    state = build_model(cfg.model, len(classes)).state_dict()
    save_checkpoint({"config": cfg.model_dump(mode="json"), "classes": list(classes), "teacher": state,
                     "student": state}, path)


@pytest.mark.parametrize("command", [["predict", "CHECKPOINT", "photo.png", "--out", "masks"], ["evaluate", "CHECKPOINT"],
                                     ["export", "CHECKPOINT", "--onnx", "model.onnx"]])
def test_a_torch_file_that_is_not_a_checkpoint_is_refused_by_each_command_naming_it(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save("photo.png")
    torch.save({"state_dict": {}}, "weights.pt")
    result = runner.invoke(app, [arg.replace("CHECKPOINT", "weights.pt") for arg in command])
    assert (result.exit_code, result.output) == (1, "error: weights.pt: not a checkpoint of s4al train or run "
                                                    "(RUN/checkpoints/cycle_N.pt): it has no 'student', 'teacher', "
                                                    "'config', 'classes'\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png", "weights.pt"]


class RunsCode:
    """What a shared file may hold: an object whose unpickling runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("command", [["predict", "CHECKPOINT", "photo.png", "--out", "masks"], ["evaluate", "CHECKPOINT"],
                                     ["export", "CHECKPOINT", "--onnx", "model.onnx"]])
def test_a_checkpoint_that_would_run_code_as_it_is_read_is_refused_unrun_and_a_run_folder_is_told_its_checkpoint(
        tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save("photo.png")
    torch.save({"student": RunsCode(tmp_path / "ran")}, "shared.pt")
    result = runner.invoke(app, [arg.replace("CHECKPOINT", "shared.pt") for arg in command])
    assert result.exit_code == 1 and result.output.startswith(
        "error: shared.pt: not read: it holds objects other than tensors and plain values, which reading would run as "
        "code (")
    assert not (tmp_path / "ran").exists()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for cycle in (2, 10):
        (tmp_path / "run" / "checkpoints" / f"cycle_{cycle}.pt").touch()
    result = runner.invoke(app, [arg.replace("CHECKPOINT", "run") for arg in command])
    assert (result.exit_code, result.output) == (1, "error: run: a folder; give a checkpoint of it, "
                                                    "RUN/checkpoints/cycle_N.pt; its last: run/checkpoints/cycle_10.pt\n")


def test_evaluate_refuses_a_dataset_of_other_classes_and_a_folder_for_synthetic_data(tmp_path):
    cfg = own_config(make_dataset(tmp_path / "data"))
    saved_checkpoint(tmp_path / "own.pt", cfg, [c["name"] for c in OWN_CLASSES])
    other = make_dataset(tmp_path / "other")
    renamed = [{**c, "name": f"{c['name']}2"} for c in OWN_CLASSES]
    (other / "classes.yaml").write_text(yaml.safe_dump({"classes": renamed}))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "own.pt"), "--data", str(other)])
    names = ", ".join(c["name"] for c in OWN_CLASSES)
    assert result.exit_code == 1
    assert result.output == (f"error: {tmp_path / 'own.pt'}: trained on the classes {names}; the dataset {other} has "
                             f"{', '.join(c['name'] for c in renamed)}\n")
    scored = runner.invoke(app, ["evaluate", str(tmp_path / "own.pt"), "--data", str(tmp_path / "data"),
                                 "--json", str(tmp_path / "scores.json")], env={"COLUMNS": "500"})
    assert scored.exit_code == 0, scored.output
    record = json.loads((tmp_path / "scores.json").read_text())  # the scores apart from the table shown
    assert (record["split"], record["images"], record["images_without_a_mask"], record["network"]) == ("val", 2, 0,
                                                                                                        "teacher")
    assert set(record["iou"]) == {c["name"] for c in OWN_CLASSES} and 0 <= record["miou"] <= 1
    assert f"the teacher of {tmp_path / 'own.pt'} on 2 images of split 'val': pixel accuracy" in scored.output
    pool_too = runner.invoke(app, ["evaluate", str(tmp_path / "own.pt"), "--data", str(tmp_path / "data"),
                                   "--split", "train", "--json", str(tmp_path / "train.json")], env={"COLUMNS": "500"})
    assert pool_too.exit_code == 0, pool_too.output  # 3 masked images, 5 of the pool without
    assert "on 3 images of split 'train' (5 images without a mask left out): pixel accuracy" in pool_too.output
    record = json.loads((tmp_path / "train.json").read_text())
    assert (record["images"], record["images_without_a_mask"]) == (3, 5)
    unlabelled = runner.invoke(app, ["evaluate", str(tmp_path / "own.pt"), "--data", str(tmp_path / "data"),
                                     "--split", "unlabelled", "--json", str(tmp_path / "none.json")], env={"COLUMNS": "500"})
    assert unlabelled.exit_code == 1 and unlabelled.output.startswith(
        f"error: split 'unlabelled' of {tmp_path / 'data'}: none of its ")  # not an mIoU of null
    assert "images holds a labelled pixel (every mask is void, or it has none): nothing to score" in unlabelled.output
    assert not (tmp_path / "none.json").exists()
    saved_checkpoint(tmp_path / "synthetic.pt", tiny_config(), SYNTHETIC_CLASSES.names)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "synthetic.pt"), "--data", str(tmp_path / "data")])
    assert (result.exit_code, result.output) == (1, f"error: --data {tmp_path / 'data'}: {tmp_path / 'synthetic.pt'} was "
                                                    "trained on the built-in synthetic streets, which have no folder; "
                                                    "leave --data out\n")


def test_a_device_that_is_not_there_is_refused_by_the_commands_that_compute(tmp_path):
    for command in (["evaluate", "cycle_0.pt"], ["query", str(tmp_path / "nowhere")]):  # before the run is read
        result = runner.invoke(app, [*command, "--device", "gpu7"])
        assert (result.exit_code, result.output) == (1, "error: device 'gpu7': not one of auto, cpu, cuda, cuda:N\n")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--set", "train.device=gpu7"],
                           env={"COLUMNS": "500"})
    assert result.exit_code == 2 and "train.device: String should match pattern" in result.output
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--set", "train.device=cuda"])
        assert (result.exit_code, result.output) == (
            1, "error: device 'cuda': this machine has no CUDA GPU that torch can use; use cpu or auto\n")
    assert not (tmp_path / "run").exists()


def test_a_count_in_a_message_is_plural_but_for_one():
    assert [counted(n, "region") for n in (0, 1, 2)] == ["0 regions", "1 region", "2 regions"]
    assert counted(1, "asked region") == "1 asked region"
    assert named("region", ["4"]) == "region 4"
    assert named("region", [str(i) for i in range(7)], limit=2) == "regions 0, 1 (and 5 more)"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_one_process_command_under_torchrun_is_refused_by_rank_0_alone_before_it_touches_the_run(tmp_path, rank):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = CliRunner().invoke(app, ["query", str(run_dir)], env={"WORLD_SIZE": "2", "RANK": rank})
    said = ("error: s4al query runs as one process: start it without torchrun (only run, train, evaluate run under "
            "torchrun)\n")
    assert (result.exit_code, result.output) == (1, said if rank == "0" else "")
    assert list(run_dir.iterdir()) == []
    shown = CliRunner().invoke(app, ["run", "--print-config"], env={"WORLD_SIZE": "2", "RANK": rank})
    assert shown.exit_code == 0 and shown.output.count("config_version:") == (1 if rank == "0" else 0)
