"""The cycle phases: where each active-learning cycle stands, and the metrics it recorded.

A cycle goes train -> acquire -> answer -> done (the final cycle, which buys nothing, goes train ->
done); a phase never goes back, and a cycle starts only once the one before it is done. The one
exception is `reopen`: a run given more cycles sends its last done cycle back to acquire. They live
in the `cycles` table of the run's ledger file (RUN_DIR/ledger.sqlite), which this module owns; the
label store (s4al/active/ledger.py) owns the rest of the file. A writer creates the table where the
file lacks it; a reader of such a file sees no phase yet.

Every connection to the file follows the ledger's rules (s4al/active/ledger.py: a rollback journal,
synchronous FULL, one BEGIN IMMEDIATE transaction per write). Labels and phases are written in separate
transactions, labels first: a kill in between leaves the old phase, and the step that resumes it
finds its labels already there (ActiveLearningRun.acquire asks nothing twice).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from s4al.active.ledger import Ledger, LedgerError, connect, utc_now, write_transaction

PHASES = ("train", "acquire", "answer", "done")

# The table as every ledger file since the first has it: a file made before this module keeps its own.
_CYCLES_TABLE = """CREATE TABLE IF NOT EXISTS cycles (
        cycle        INTEGER PRIMARY KEY CHECK (cycle >= 0),
        phase        TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL,
        finished_at  TEXT,
        metrics_json TEXT NOT NULL DEFAULT '{}'
    )"""


class CyclePhases(AbstractContextManager):
    """The phases of the run whose label store is `ledger`: the same file, opened the same way
    (read-only where the ledger is), through a connection of its own."""

    def __init__(self, ledger: Ledger) -> None:
        self.path = ledger.path
        self.readonly = ledger.readonly
        self._conn = connect(self.path, self.readonly)
        if not self.readonly:
            try:
                with write_transaction(self._conn) as conn:
                    conn.execute(_CYCLES_TABLE)
            except BaseException:
                self._conn.close()
                raise

    def close(self) -> None:
        self._conn.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_phase(self, cycle: int, phase: str, metrics: Mapping[str, Any] | None = None) -> None:
        """Enter `phase` of `cycle` (created on first use), or stay in it; `metrics` are merged into
        the cycle's metrics (new keys win). Phase 'done' stamps finished_at."""
        cycle = int(cycle)
        if phase not in PHASES:
            raise LedgerError(f"unknown phase '{phase}'; known: {', '.join(PHASES)}")
        if cycle < 0:
            raise LedgerError(f"cycle {cycle} is negative")
        with write_transaction(self._conn) as conn:
            row = conn.execute("SELECT phase, metrics_json FROM cycles WHERE cycle = ?", (cycle,)).fetchone()
            self._refuse_out_of_order(conn, cycle, phase, row and row[0])
            merged = json.dumps({**(json.loads(row[1]) if row else {}), **(metrics or {})})
            now = utc_now()
            finished_at = now if phase == "done" else None
            if row is None:
                conn.execute(
                    "INSERT INTO cycles (cycle, phase, started_at, updated_at, finished_at, metrics_json) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (cycle, phase, now, now, finished_at, merged),
                )
            else:
                conn.execute(
                    "UPDATE cycles SET phase = ?, updated_at = ?, finished_at = ?, metrics_json = ? WHERE cycle = ?",
                    (phase, now, finished_at, merged, cycle),
                )

    def reopen(self, cycle: int) -> None:
        """The last cycle, done as the run's final one, goes back to 'acquire': the run has more
        cycles now, and this one buys labels for the next (its metrics stay)."""
        with write_transaction(self._conn) as conn:
            row = conn.execute("SELECT phase FROM cycles WHERE cycle = ?", (cycle,)).fetchone()
            (last,) = conn.execute("SELECT MAX(cycle) FROM cycles").fetchone()
            if row is None or row[0] != "done" or cycle != last:
                where = "has not started" if row is None else f"is in phase '{row[0]}'"
                raise LedgerError(f"cycle {cycle} cannot be reopened: only the last cycle, done, can "
                                  f"(it {where}, the last is {last})")
            conn.execute("UPDATE cycles SET phase = 'acquire', updated_at = ?, finished_at = NULL WHERE cycle = ?",
                         (utc_now(), cycle))

    @staticmethod
    def _refuse_out_of_order(conn: sqlite3.Connection, cycle: int, phase: str, current: str | None) -> None:
        if current is not None and PHASES.index(phase) < PHASES.index(current):
            raise LedgerError(f"cycle {cycle} is in phase '{current}'; it cannot go back to '{phase}'")
        if current is None and cycle > 0:
            row = conn.execute("SELECT phase FROM cycles WHERE cycle = ?", (cycle - 1,)).fetchone()
            if row is None or row[0] != "done":
                where = "has not started" if row is None else f"is in phase '{row[0]}'"
                raise LedgerError(f"cycle {cycle} cannot start: cycle {cycle - 1} {where}")

    def phase(self, cycle: int) -> str | None:
        """The cycle's current phase, None if it never started."""
        row = self._read("SELECT phase FROM cycles WHERE cycle = ?", (cycle,))
        return None if row is None else row[0]

    def metrics(self, cycle: int) -> dict[str, Any]:
        row = self._read("SELECT metrics_json FROM cycles WHERE cycle = ?", (cycle,))
        return {} if row is None else json.loads(row[0])

    def last_cycle(self) -> int | None:
        """The highest cycle with a phase recorded, None before the first."""
        row = self._read("SELECT MAX(cycle) FROM cycles")
        return None if row is None else row[0]

    def _read(self, query: str, parameters: tuple = ()) -> tuple | None:
        """The query's first row; None where the file has no cycles table yet (a reader before any writer)."""
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cycles'").fetchone() is None:
            return None
        return self._conn.execute(query, parameters).fetchone()
