"""Atomic writes (s4al/atomic.py): a kill mid-write leaves the old file whole, and a temp file that
`stray_temp_files` finds by the name of the file it was for."""

import os
import stat

import pytest

from s4al.atomic import atomic_write, stray_temp_files


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
