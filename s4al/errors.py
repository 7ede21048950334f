"""User errors: what s4al refuses because of its input (a file, a folder, a config, an answer),
told to the user as one line, `error: MESSAGE`, and exit status 1. Every other exception is a fault
of s4al or of a library and keeps its traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager



class S4alError(ValueError):
    """Input s4al refuses; the message names the file (or option) and the problem. The base of
    every such error; a ValueError, since each is a bad value given to s4al."""


def first_of(items: list[str], limit: int = 5, sep: str = ", ") -> str:
    """The first `limit` items for a message, and how many more there are: "a, b (and 3 more)"."""
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


# A file or folder the user named that is missing, unreadable or of the wrong kind: the system's
# message names the path.
USER_ERRORS = (S4alError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               NotADirectoryError)


@contextmanager
def user_errors_reported() -> Iterator[None]:
    """A command's body: a user error ends it with `error: MESSAGE` on stderr and exit status 1."""
    import typer  # the command line's: the library modules that raise these errors never load it
    try:
        yield
    except USER_ERRORS as err:
        from s4al import distributed  # only now: most commands that meet such an error never load torch
        if distributed.reports_error(str(err)):  # under torchrun: once, not once per rank
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
