"""User errors: what s4al refuses because of its input (a file, a folder, a config, an answer),
told to the user as one line, `error: MESSAGE`, and exit status 1 (under torchrun once, not once per
rank). Every other exception is a fault of s4al or of a library and keeps its traceback."""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta


class S4alError(ValueError):
    """Input s4al refuses; the message names the file (or option) and the problem. The base of
    every such error; a ValueError, since each is a bad value given to s4al."""


class S4alWarning(UserWarning):
    """Input s4al goes on with but its user should know of (a class no label holds, a setting capped
    to small images). The command line shows it as `warning: MESSAGE` (show_user_warnings)."""


def show_user_warnings() -> None:
    """From now on S4alWarnings show as `warning: MESSAGE` on stderr, without the source line
    Python adds for a programmer; other warnings as Python shows them."""
    python_shows = warnings.showwarning
    if getattr(python_shows, "shows_user_warnings", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, S4alWarning):
            print(f"warning: {message}", file=file or sys.stderr, flush=True)
        else:
            python_shows(message, category, filename, lineno, file, line)

    show.shows_user_warnings = True
    warnings.showwarning = show


def user_message(err: BaseException) -> str:
    """A user error's message. One a DataLoader worker raised comes back as "Caught ... in DataLoader
    worker process N." and the worker's traceback: its own message is what follows the traceback's
    last line naming the error's type."""
    text = str(err)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    own = re.compile(rf"(?:[\w.]+\.)?{re.escape(type(err).__name__)}(?:: (.*))?$")
    lines = text.splitlines()
    for last in range(len(lines) - 1, 0, -1):
        if match := own.match(lines[last]):
            return "\n".join([match[1] or "", *lines[last + 1:]]).strip()
    return text


# A file or folder the user named that is missing, unreadable or of the wrong kind: the system's
# message names the path.
USER_ERRORS = (S4alError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               NotADirectoryError)


# What the machine refuses to store, whatever the file: what a run keeps is written whole or not at all
# (s4al/atomic.py, the ledger's transactions), so the command can run again once there is room.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@contextmanager
def user_errors_reported() -> Iterator[None]:
    """A command's body: a user error ends it with `error: MESSAGE` on stderr and exit status 1; so
    does a write the disk refuses (full, read-only), naming the file where the system does."""
    try:
        yield
    except USER_ERRORS as err:
        _exit_with(user_message(err))
    except sqlite3.DatabaseError as err:  # s4al's one database is a run's ledger; its opening names the file
        if not (getattr(err, "sqlite_errorname", None) or "").startswith("SQLITE_CORRUPT"):
            raise
        _exit_with(f"the run's label ledger (ledger.sqlite) is damaged ({err}); restore it from a copy")
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        _exit_with(f"{where}cannot write: {err.strerror}; every file written whole before is kept: free space (or "
                   "make the folder writable), then run the command again")


def _exit_with(message: str) -> None:
    import typer  # the command line's: the library modules that raise these errors never load it

    if reports_error(message):  # under torchrun: once, not once per rank
        rank = int(os.environ.get("RANK", "0"))  # another rank prints what it alone met
        typer.echo(f"error: {f'rank {rank}: ' if rank else ''}{message}", err=True)
    raise typer.Exit(1) from None


# How long another rank waits for rank 0's error before it prints its own: the ranks meet the same
# refusal within moments of each other; a healthy rank 0 waits in a collective until this one ends.
ERROR_WAIT = timedelta(seconds=10)
ERROR_KEY = "s4al/error"


def _torchrun_store(timeout: timedelta):
    """The key-value store torchrun's agent serves for its workers (it outlives them), or None:
    launched otherwise, or the agent is gone."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import torch.distributed as dist  # only under torchrun: most commands that meet an error never load torch

    try:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout=timeout)
    except (KeyError, ValueError, RuntimeError):
        return None


def reports_error(message: str, wait: timedelta = ERROR_WAIT) -> bool:
    """Whether this process prints `message`, the error that ends it, so that an error every rank
    meets (a refused config, run folder or checkpoint) is printed once and one rank's own still
    reaches the user. Under torchrun rank 0 prints and leaves its message in torchrun's store;
    another rank prints unless rank 0 left the same message within `wait`. Every process
    prints where there is no such store (one process, or ranks started without torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return True
    store = _torchrun_store(wait)
    if store is None:
        return True
    key = f"{ERROR_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # one per attempt of the job
    try:
        if int(os.environ.get("RANK", "0")) == 0:
            store.set(key, message)
            return True
        store.wait([key], wait)
        return store.get(key).decode() != message
    except RuntimeError:  # rank 0 did not report in time, or the store went with the agent
        return True
