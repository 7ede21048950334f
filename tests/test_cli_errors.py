"""User errors at the command line (s4al/errors.py): input s4al refuses ends a command with one line,
`error: MESSAGE`, and exit status 1; any other exception is a fault and keeps its traceback."""

import pytest
import typer
import yaml
from typer.testing import CliRunner

from s4al.cli import app
from s4al.data import DatasetError
from s4al.errors import user_errors_reported

runner = CliRunner()


def run_command_raising(error: Exception):
    """The result of a one-command app whose body, under user_errors_reported, raises `error`."""
    probe = typer.Typer()

    @probe.command()
    def fail() -> None:
        with user_errors_reported():
            raise error

    return runner.invoke(probe, [])


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
