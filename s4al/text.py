"""How messages name things: paths as shell words, counts with their noun, the first items of a
list and how many more."""

from __future__ import annotations

import shlex


def shell(path: object) -> str:
    """A path as a shell word, for a command a message suggests: quoted where it holds a space or
    another character the shell would read."""
    return shlex.quote(str(path))


def first_line(err: BaseException) -> str:
    """An exception's message for a one-line error: its first line, else its type's name."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and a noun, plural (`plural`, or the noun + s) but for one: "1 region", "3 regions"."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def named(noun: str, items: list[str], limit: int = 5) -> str:
    """A regular noun, plural but for one, and the first `limit` items: "region 4", "regions 4, 7"."""
    return f"{noun if len(items) == 1 else noun + 's'} {first_of(items, limit)}"


def first_of(items: list[str], limit: int = 5, sep: str = ", ") -> str:
    """The first `limit` items for a message, and how many more there are: "a, b (and 3 more)"."""
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more
