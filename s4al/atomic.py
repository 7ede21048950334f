"""Durable file writes: a kill or a failed write at any moment leaves the old file or the whole new
one, never a torn one, and no temp file behind a failure. Only a kill leaves a temp file, named
.NAME.RANDOM.tmp beside the file NAME: `stray_temp_files` finds them for the folder's next writer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from s4al.errors import S4alError


def output_folder(path: Path) -> Path:
    """`path` made as a folder (with its parents) for a command's outputs; a file in its place is
    refused naming it, where mkdir's own error would say only that the file exists."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise S4alError(f"{path}: exists and is not a folder; give a folder for the output")
    path.mkdir(parents=True, exist_ok=True)
    return path


def unwritable(path: Path, what: str, read_from: Path) -> str | None:
    """Why output file `path` cannot take `what` (None: it can), found before a command's work
    (minutes) rather than after it: a folder, `read_from` itself (the checkpoint the output is made
    from, which the write would replace), or a place it cannot be written. Leaves no file behind."""
    path = Path(path)
    if path.is_dir():
        return f"{path}: is a folder; give the path of the file for {what}"
    if path.exists() and Path(read_from).exists() and path.samefile(read_from):
        return f"{path}: is the checkpoint read; give another path for {what}, which would replace it"
    try:  # as the write will: a temp file beside it (renamed over it), the file itself untouched
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = _temp_name_parts(path.name)
        descriptor, probe = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    except OSError as err:
        return f"{path}: cannot write {what} there ({err.strerror}: {err.filename})"
    os.close(descriptor)
    os.unlink(probe)
    return None


def _temp_name_parts(name: str) -> tuple[str, str]:
    """The (prefix, suffix) of the temp files of a file called `name` (a glob pattern for strays)."""
    return f".{name}.", ".tmp"


def stray_temp_files(directory: Path, name_glob: str = "*") -> list[Path]:
    """The temp files that writes of files named like `name_glob` in `directory` left behind when
    killed. Only a folder's one writer may remove them: another's may be writing its own."""
    prefix, suffix = _temp_name_parts(name_glob)
    return sorted(Path(directory).glob(f"{prefix}*{suffix}"))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
    """Makes the renames in `folder` durable: a power loss after it keeps them (a file's fsync alone
    does not keep its name on every filesystem). Where a folder cannot be synced (Windows), none."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # a filesystem that syncs no folder: its renames are as durable as it makes them
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields the path of a temp file beside `path` (its own name, so two writers never share one)
    for a writer that takes a path; on success it is fsynced, renamed over `path` and the rename
    made durable, on any error removed."""
    path = Path(path)
    prefix, suffix = _temp_name_parts(path.name)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    except OSError as err:
        raise _naming(err, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it; mkstemp's 0600 would hide it from others
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)
    except OSError as err:  # a full disk, a folder gone read-only: said of the file written, not its temp file
        with suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise _naming(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """`err` naming `path`, the file a write was for, where it named none or the write's temp file."""
    if err.filename is None or Path(err.filename).name.startswith(_temp_name_parts(path.name)[0]):
        if err.errno is None:  # a message alone (a library's own OSError): kept, the file named beside it
            err.filename = str(path)
            return err
        return type(err)(err.errno, err.strerror, str(path))  # one file named: not "TEMP -> PATH" nor "PATH -> None"
    return err


@contextmanager
def atomic_write(path: Path, mode: str = "wb", newline: str | None = None) -> Iterator[IO]:
    """Yields an open temp file beside `path`, renamed over `path` once written whole (atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, mode, newline=newline) as file:
        yield file
