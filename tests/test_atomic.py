"""Atomic writes (s4al/atomic.py): a kill mid-write leaves the old file whole, and a temp file that
`stray_temp_files` finds by the name of the file it was for."""

import errno
import os
import stat

import pytest
import typer
from typer.testing import CliRunner

from s4al.atomic import atomic_write, stray_temp_files
from s4al.errors import user_errors_reported


def killed_mid_write(path, data: bytes) -> None:
    """Writes `data` to `path` in a child process that dies inside atomic_write, before the rename."""
    pid = os.fork()
    if pid == 0:
        with atomic_write(path) as file:
            file.write(data)
            file.flush()
            os._exit(0)  # like a kill: no cleanup runs
    os.waitpid(pid, 0)


def test_a_kill_mid_write_leaves_the_old_file_and_a_stray_found_by_the_file_name(tmp_path):
    checkpoint, log = tmp_path / "cycle_0.pt", tmp_path / "metrics.jsonl"
    checkpoint.write_bytes(b"old")
    killed_mid_write(checkpoint, b"new")
    killed_mid_write(log, b"line")
    (tmp_path / "notes.tmp").write_bytes(b"a file of someone else's")
    assert checkpoint.read_bytes() == b"old" and not log.exists()
    (stray,) = stray_temp_files(tmp_path, "cycle_*.pt")
    assert stray.name.startswith(".cycle_0.pt.") and stray.read_bytes() == b"new"
    assert {p.read_bytes() for p in stray_temp_files(tmp_path)} == {b"new", b"line"}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_has_the_mode_open_would_give_it(tmp_path, umask, mode):
    """Readable by the group and others as the user's umask allows (a colleague reading labels)."""
    previous = os.umask(umask)
    try:
        with atomic_write(tmp_path / "labels.png") as file:
            file.write(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "labels.png").stat().st_mode) == mode


def test_a_write_the_disk_refuses_names_its_file_keeps_the_old_one_and_ends_a_command_in_one_line(tmp_path):
    """A full disk fails a write (ENOSPC from write or close, naming no file): the error names the
    file the write was for, not its temp file, the old file stays whole, and a command says it as
    one `error:` line; another OSError keeps its traceback."""
    log = tmp_path / "metrics.jsonl"
    log.write_text("kept\n")
    with pytest.raises(OSError) as refused:
        with atomic_write(log, "w") as file:
            file.write("new\n")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert refused.value.filename == str(log) and log.read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]

    app = typer.Typer()

    @app.command()
    def write(full: bool = True) -> None:
        with user_errors_reported():
            with atomic_write(log, "w") as file:
                file.write("new\n")
                raise OSError(errno.ENOSPC if full else errno.EBADF, "No space left on device" if full else "bad")

    result = CliRunner().invoke(app, [], env={"COLUMNS": "250"})
    assert result.exit_code == 1 and result.output == (
        f"error: {log}: cannot write: No space left on device; every file written whole before is kept: free space "
        "(or make the folder writable), then run the command again\n")
    other = CliRunner().invoke(app, ["--no-full"])
    assert isinstance(other.exception, OSError) and other.exception.errno == errno.EBADF


def test_a_write_refused_at_its_rename_names_the_file_alone(tmp_path):
    """os.replace's error names the temp file and the target: said of the target alone (not
    "TEMP -> PATH", nor "PATH -> None")."""
    taken = tmp_path / "scores.json"
    taken.mkdir()  # a folder in the file's place
    with pytest.raises(IsADirectoryError) as refused:
        with atomic_write(taken, "w") as file:
            file.write("{}")
    assert str(refused.value) == f"[Errno {errno.EISDIR}] Is a directory: '{taken}'"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="open files are named in /proc")
def test_a_write_syncs_the_file_then_its_folder_once_renamed(tmp_path, monkeypatch):
    """A power loss after the write keeps the new file under its name: its bytes synced before the
    rename, the folder holding the name synced after it."""
    synced, fsync = [], os.fsync

    def recording(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((os.path.basename(target), (tmp_path / "cycle.json").exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    with atomic_write(tmp_path / "cycle.json") as file:
        file.write(b"{}")
    assert [(name.startswith(".cycle.json."), renamed) for name, renamed in synced] == [(True, False), (False, True)]
    assert synced[1][0] == tmp_path.name
