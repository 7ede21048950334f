"""The cycle phases (s4al/active/phases.py): their order, merged metrics, and the `cycles` table in
the ledger file: made where it is missing, read where a writer has not made it yet, and kept as
it is in a ledger file that has it from before the phases had a module of their own."""

import sqlite3
from contextlib import closing

import pytest

from conftest import read_rows
from s4al.active.ledger import Ledger, LedgerError
from s4al.active.phases import CyclePhases

# The cycles table as the ledger made it before the phases had a module of their own.
OLD_CYCLES_TABLE = ("CREATE TABLE cycles (cycle INTEGER PRIMARY KEY CHECK (cycle >= 0), phase TEXT NOT NULL, "
                    "started_at TEXT NOT NULL, updated_at TEXT NOT NULL, finished_at TEXT, "
                    "metrics_json TEXT NOT NULL DEFAULT '{}')")


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as opened:
        opened.register_images([("a", 10, 10)])
        yield opened


@pytest.fixture
def phases(ledger):
    with CyclePhases(ledger) as opened:
        yield opened


def cycles_rows(path):
    return read_rows(path, "SELECT cycle, phase, finished_at IS NOT NULL, metrics_json FROM cycles ORDER BY cycle")


def cycles_ddl(path):
    """The statement that made the file's cycles table, its layout apart; [] if there is none."""
    return [" ".join(sql.split()).replace("( ", "(").replace(" )", ")")
            for (sql,) in read_rows(path, "SELECT sql FROM sqlite_master WHERE name = 'cycles'")]


def test_a_cycle_goes_through_its_phases_in_order_and_merges_its_metrics(phases):
    assert (phases.last_cycle(), phases.phase(0), phases.metrics(0)) == (None, None, {})
    phases.set_phase(0, "train")
    phases.set_phase(0, "train", {"val": {"miou": 0.5}, "labelled_pixels": 10})
    phases.set_phase(0, "acquire", {"acquire_seconds": 2.0, "labelled_pixels": 12})  # a new value wins
    assert (phases.phase(0), phases.metrics(0)) == ("acquire", {"val": {"miou": 0.5}, "labelled_pixels": 12,
                                                                "acquire_seconds": 2.0})
    phases.set_phase(0, "answer")
    phases.set_phase(0, "done")
    phases.set_phase(1, "train")
    phases.set_phase(1, "done")  # the final cycle buys nothing: train, then done
    assert (phases.last_cycle(), phases.phase(0), phases.phase(1)) == (1, "done", "done")
    assert [row[:3] for row in cycles_rows(phases.path)] == [(0, "done", 1), (1, "done", 1)]


def test_a_phase_out_of_order_is_refused_and_writes_nothing(phases):
    phases.set_phase(0, "answer", {"miou": 0.5})
    before = cycles_rows(phases.path)
    refused = [
        ((0, "train"), "cycle 0 is in phase 'answer'; it cannot go back to 'train'"),
        ((1, "train"), "cycle 1 cannot start: cycle 0 is in phase 'answer'"),
        ((2, "train"), "cycle 2 cannot start: cycle 1 has not started"),
        ((0, "evaluate"), "unknown phase 'evaluate'; known: train, acquire, answer, done"),
        ((-1, "train"), "cycle -1 is negative"),
    ]
    for (cycle, phase), message in refused:
        with pytest.raises(LedgerError, match=message):
            phases.set_phase(cycle, phase, {"miou": 0.9})
    assert cycles_rows(phases.path) == before


def test_a_writer_makes_the_cycles_table_as_it_always_was(ledger, tmp_path):
    assert cycles_ddl(ledger.path) == []  # the label store makes no cycles table
    with CyclePhases(ledger) as phases:
        phases.set_phase(0, "train", {"miou": 0.25})
        assert cycles_rows(ledger.path) == [(0, "train", 0, '{"miou": 0.25}')]  # committed at once: another reader sees it
    assert cycles_ddl(ledger.path) == [OLD_CYCLES_TABLE]


def test_a_reader_before_any_writer_sees_no_phase_then_sees_what_a_writer_sets(ledger):
    with Ledger(ledger.path, readonly=True) as reader_ledger, CyclePhases(reader_ledger) as reader:
        assert (reader.last_cycle(), reader.phase(0), reader.metrics(0)) == (None, None, {})
        assert cycles_ddl(ledger.path) == []  # a reader makes nothing
        with CyclePhases(ledger) as writer:
            writer.set_phase(0, "train", {"miou": 0.25})
        assert (reader.last_cycle(), reader.phase(0), reader.metrics(0)) == (0, "train", {"miou": 0.25})
        with pytest.raises(LedgerError, match=r"could not be written \(attempt to write a readonly database\)"):
            reader.set_phase(0, "acquire")
    assert cycles_rows(ledger.path) == [(0, "train", 0, '{"miou": 0.25}')]


def test_a_ledger_file_with_the_cycles_table_from_before_keeps_it_and_its_rows(ledger):
    with closing(sqlite3.connect(ledger.path)) as conn, conn:  # what the ledger wrote before: its own cycles table
        conn.execute(OLD_CYCLES_TABLE)
        conn.execute("INSERT INTO cycles VALUES (0, 'done', 't0', 't1', 't1', '{\"miou\": 0.4}')")
        conn.execute("INSERT INTO cycles VALUES (1, 'answer', 't2', 't3', NULL, '{\"miou\": 0.5}')")
    with Ledger(ledger.path, readonly=True) as reader_ledger, CyclePhases(reader_ledger) as reader:
        assert (reader.last_cycle(), reader.phase(1), reader.metrics(1)) == (1, "answer", {"miou": 0.5})
    with CyclePhases(ledger) as phases:
        phases.set_phase(1, "done")
        phases.set_phase(2, "train")
    assert cycles_ddl(ledger.path) == [OLD_CYCLES_TABLE]
    assert [row[:3] for row in cycles_rows(ledger.path)] == [(0, "done", 1), (1, "done", 1), (2, "train", 0)]
