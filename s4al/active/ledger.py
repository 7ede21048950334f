"""The label store: what was asked and answered, in the SQLite file RUN_DIR/ledger.sqlite.

Tables: `images` (the train pool; `initial` images are fully labelled by the dataset's own labels,
from the start or since a mask was given for them, `acquired_whole_cycle` marks images bought whole
by an image-level baseline), `regions` (boxes asked for labels and their answers), `meta` (JSON
values). The same file holds the `cycles` table of the cycle phases (s4al/active/phases.py), which
owns it; who is labelled, and how many pixels, is derived from this store by LabelState
(s4al/active/label_state.py).
A region is 'asked', then 'answered' (its label patch stored) or 'skipped' (the annotator declined
it: never asked again, not labelled nor counted as labelled pixels unless answered later).
Each answered region's label patch (uint8 class ids, 255 = ignore) lives in
RUN_DIR/labels/region_{id:06d}.png, or, for a later answer (a correction), the first
region_{id:06d}.vN.png not on disk or holding that very answer; the row stores that path
relative to RUN_DIR.

Durability: every write is one transaction that takes the write lock (BEGIN IMMEDIATE) before it
validates, so a refused call writes nothing at all. An answer writes its PNG (temp file, fsync,
rename) under a name no file has (or takes the file of these very bytes a killed call wrote), before
the row is marked 'answered' and pointed at it in the same transaction. No answer writes over or
removes a file: a kill or a failed write at any point leaves every row with the complete PNG it
points to, as before or as after the call, and a ledger put back from a backup still finds the files
it points to. A kill leaves PNGs no row points to until the same answers are given again. Temp files
a kill left behind are removed by the next writer, under the write lock.

A ledger of an older schema version is migrated in place when opened for writing; a read-only
reader reads it as it is (what an older version lacks reads as unknown).

One process writes (rank 0); others may open it with readonly=True. Every connection to the file
follows the same rules (`connect`, `write_transaction`). The file holds every commit itself (a
rollback journal, no write-ahead log kept beside it), so between writes `ledger.sqlite` alone is
the whole ledger: copied, backed up or put back on its own, it loses no answer; a reader leaves
nothing beside it, and reads on read-only media. A kill in the middle of a write leaves
`ledger.sqlite-journal`, which the next connection uses to undo the write. Do not share a Ledger
across fork (e.g. into DataLoader workers): open one per process.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from s4al.atomic import atomic_write, stray_temp_files, sync_folder
from s4al.data.base import Box
from s4al.errors import S4alError
from s4al.text import first_of, shell

SCHEMA_VERSION = 4
# The meta table's keys (besides schema_version), each a JSON value:
RUN_ID = "run_id"  # a random id the run is made with; its Label Studio tasks carry it
CLASSES_META = "classes"  # the class names, in class id order
COLOURS_META = "colours"  # the classes' RGB colours, in class id order (runs made since it was kept)
MASK_READING = "mask_reading"  # the dataset's mask_reading() (runs opened since it was kept)
SEED_META = "seed"  # the run's seed, for the ledger read on its own
CONFIG_DIGEST = "config_digest"  # config_digest(config.yaml) when the run was made
# that of the config.yaml a resume is writing in its place (the file's new form), until CONFIG_DIGEST is
CONFIG_DIGEST_NEXT = "config_digest_next"
FILE_DIGEST = "config_sha256"  # the same in ledgers made before: the file's bytes
EVALUATED_META = "evaluated_images"  # {split: image ids} of the val and test splits last opened
RESUME_CHANGES = "resume_changes"  # the config keys changed on resume, when, from what
JOINED = "joined"  # the images and masks added to the dataset after the run was made, as they joined it
PROJECT_META = "label_studio_project"  # {"url": server, "id": project id, "since": when s4al made it} of the
# run's one project
SAID_META = "said_by_the_last_import"  # {kind: region ids}: what the last import said it kept as it was
CYCLES_META = "active_cycles"  # the active.cycles the run last opened with, whatever set it
SUMMARIES_DUE = "summaries_due"  # finished cycles whose summary a change of their answers is to write again
# version 1 lacks the 'skipped' state, versions 1 and 2 the column painted_at, versions 1 to 3 source_digest
READABLE_VERSIONS = (1, 2, 3, 4)
LABELS_DIRNAME = "labels"

_REGIONS_TABLE = """CREATE TABLE regions (
        region_id   INTEGER PRIMARY KEY,
        image_id    TEXT NOT NULL REFERENCES images (image_id),
        cycle       INTEGER NOT NULL CHECK (cycle >= 0),
        y0          INTEGER NOT NULL,
        x0          INTEGER NOT NULL,
        y1          INTEGER NOT NULL,
        x1          INTEGER NOT NULL,
        metric      TEXT NOT NULL,
        score       REAL,
        state       TEXT NOT NULL DEFAULT 'asked' CHECK (state IN ('asked', 'answered', 'skipped')),
        label_path  TEXT,
        asked_at    TEXT NOT NULL,
        answered_at TEXT,  -- when answered or skipped
        answered_by TEXT,  -- who answered or skipped
        painted_at  TEXT,  -- when the answer was painted, as its source tells (UTC); NULL: not told
        source_digest TEXT,  -- 'SIZE:SHA256' of the file the answer was read from; NULL: not known;
                             -- of a skipped region, 'patch:SHA256' of the painting the skip turned down
        CHECK ((state = 'answered') =
               (label_path IS NOT NULL AND answered_at IS NOT NULL AND answered_by IS NOT NULL)),
        CHECK ((state = 'skipped') <= (answered_at IS NOT NULL AND answered_by IS NOT NULL)),
        CHECK (0 <= y0 AND y0 < y1 AND 0 <= x0 AND x0 < x1),
        UNIQUE (image_id, y0, x0, y1, x1)
    )"""
_REGION_INDEXES = (
    "CREATE INDEX regions_by_cycle ON regions (cycle, state)",
    "CREATE INDEX regions_by_state ON regions (state)",
)

_SCHEMA = (
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL  -- JSON
    )""",
    """CREATE TABLE images (
        image_id             TEXT PRIMARY KEY,
        height               INTEGER NOT NULL CHECK (height > 0),
        width                INTEGER NOT NULL CHECK (width > 0),
        initial              INTEGER NOT NULL CHECK (initial IN (0, 1)),
        acquired_whole_cycle INTEGER CHECK (acquired_whole_cycle >= 0),
        acquired_metric      TEXT,
        acquired_score       REAL,
        acquired_at          TEXT,
        CHECK (initial = 0 OR acquired_whole_cycle IS NULL),
        CHECK ((acquired_whole_cycle IS NULL) = (acquired_at IS NULL))
    )""",
    _REGIONS_TABLE,
    *_REGION_INDEXES,
)

_VERSION_1_COLUMNS = (
    "region_id, image_id, cycle, y0, x0, y1, x1, metric, score, state, "
    "label_path, asked_at, answered_at, answered_by"
)
_LATER_COLUMNS = ("painted_at", "source_digest")  # the columns versions 3 and 4 added, in this order
_REGION_COLUMNS = f"{_VERSION_1_COLUMNS}, {', '.join(_LATER_COLUMNS)}"


class LedgerError(S4alError):
    """A refused ledger operation; nothing was written."""


class LabelWriteError(LedgerError):
    """A label patch that could not be written (a full disk, a folder gone read-only); nothing was
    stored, every label is as it was."""

    def __init__(self, path: Path, err: OSError) -> None:
        self.path = path
        self.reason = err.strerror or str(err)
        super().__init__(f"{path}: could not write the label patch ({self.reason}); nothing was stored, "
                         "every label is as it was")


# SQLite's errors of the disk or the folder, not of the file's content: the ledger is as it was
_NOT_WRITTEN = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")


def ledger_error(path: Path | str, err: sqlite3.DatabaseError, reading: bool = False) -> LedgerError:
    """What an SQLite error says of the ledger at `path`: not written (a full disk, a read-only
    folder, another process writing it: nothing of the operation is stored), not read (`reading`:
    a reader's open), damaged, or no ledger."""
    name = getattr(err, "sqlite_errorname", None) or ""
    if reading and name.startswith(_NOT_WRITTEN):
        return LedgerError(f"{path}: could not be read ({err}); nothing was changed. Make the folder readable, or "
                           "copy the run folder where it can be written and read it there")
    if name in ("SQLITE_IOERR_LOCK", "SQLITE_IOERR_RDLOCK", "SQLITE_IOERR_UNLOCK", "SQLITE_PROTOCOL"):
        return LedgerError(f"{path}: the filesystem refused SQLite's file locks ({err}); nothing of this write was "
                           "stored. Put the run folder on a disk that serves locks (a local disk, or a network "
                           "filesystem mounted with lock support), then run the command again")
    if name.startswith(_NOT_WRITTEN):
        return LedgerError(f"{path}: could not be written ({err}); nothing of this write was stored, the ledger is as "
                           "its last write left it: free space or make the folder writable, then run the command again")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return LedgerError(f"{path}: held by another process ({err}); nothing of this write was stored: run the "
                           "command again once that process ends")
    if name.startswith("SQLITE_CORRUPT"):
        return LedgerError(f"{path}: damaged ({err}); restore it from a copy")
    return LedgerError(f"{path}: not a label ledger ({err})")


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    """A connection to the ledger file at `path` under its durability rules: a writer keeps the file
    in rollback-journal mode (a ledger an older s4al left in WAL mode takes its log in) and syncs
    every commit to disk (synchronous FULL); a reader opens the file read-only and must find it.
    Transactions are explicit: see write_transaction."""
    if readonly and not path.is_file():
        raise FileNotFoundError(f"{path}: no ledger here")
    try:
        return _connection(path, readonly)
    except sqlite3.DatabaseError as err:
        if getattr(err, "sqlite_errorname", None) != "SQLITE_READONLY_ROLLBACK":
            raise ledger_error(path, err, reading=readonly) from None
    _undo_interrupted_write(path)  # a reader found a write that a kill left half done
    try:
        return _connection(path, readonly)
    except sqlite3.DatabaseError as err:
        raise ledger_error(path, err, reading=readonly) from None


def _connection(path: Path, readonly: bool) -> sqlite3.Connection:
    target = f"{path.resolve().as_uri()}?mode=ro" if readonly else str(path)
    conn = sqlite3.connect(target, uri=readonly, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("PRAGMA synchronous = FULL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a write a kill left half done shows here
    except BaseException:
        conn.close()
        raise
    return conn


def _undo_interrupted_write(path: Path) -> None:
    """Rolls back the write that a kill interrupted, from the journal beside the file: a connection
    that may write does it as it first reads. SQLite does so only where no process is writing."""
    try:
        with closing(sqlite3.connect(str(path), isolation_level=None, timeout=30)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        raise LedgerError(f"{path}: holds a write that a kill left half done ({path.name}-journal beside it, {err}), "
                          "which only a process that may write the folder can undo: run the command where the folder "
                          "can be written, or copy the folder (the journal too) somewhere it can") from None


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write: IMMEDIATE takes the write lock before the validation reads, so checks and writes
    are atomic; `with conn` commits on success and rolls back on any exception."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        with conn:
            yield conn
    except sqlite3.OperationalError as err:  # a full disk, a folder gone read-only: rolled back
        raise ledger_error(_file_of(conn), err) from err


def _set_meta(conn: sqlite3.Connection, key: str, encoded: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, encoded))


def _register(conn: sqlite3.Connection, records: Iterable[tuple[str, int, int]], initial: Collection[str]) -> None:
    """Ledger.register_images inside a write transaction."""
    initial = {str(image_id) for image_id in initial}
    rows = [(str(image_id), int(h), int(w), int(str(image_id) in initial)) for image_id, h, w in records]
    ids = [row[0] for row in rows]
    problems = [f"image '{i}' listed twice" for i, n in Counter(ids).items() if n > 1]
    problems += [f"initial image '{i}' is not in the records" for i in sorted(initial - set(ids))]
    problems += [f"image '{i}' has size {h}x{w}" for i, h, w, _ in rows if h < 1 or w < 1]
    existing = {row[0]: row for row in conn.execute("SELECT image_id, height, width, initial FROM images")}
    problems += [f"image '{row[0]}' is registered as (h, w, initial) = {existing[row[0]][1:]}, not {row[1:]}"
                 for row in rows if row[0] in existing and existing[row[0]] != row]
    _refuse_if(problems, "register_images")
    conn.executemany("INSERT INTO images (image_id, height, width, initial) VALUES (?, ?, ?, ?)",
                     [row for row in rows if row[0] not in existing])


def _label_whole(conn: sqlite3.Connection, image_ids: Sequence[str]) -> None:
    """Ledger.label_whole inside a write transaction."""
    image_ids = [str(i) for i in image_ids]
    _refuse_if(_not_pool_images(conn, image_ids), "label_whole")
    conn.executemany("UPDATE images SET initial = 1 WHERE image_id = ?", [(i,) for i in image_ids])


def _file_of(conn: sqlite3.Connection) -> str:
    try:
        return conn.execute("PRAGMA database_list").fetchone()[2] or "the label ledger"
    except sqlite3.Error:
        return "the label ledger"


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    height: int
    width: int
    initial: bool
    acquired_cycle: int | None  # cycle in which an image-level baseline bought it whole

    @property
    def fully_labelled(self) -> bool:
        return self.initial or self.acquired_cycle is not None


@dataclass(frozen=True)
class Region:
    region_id: int
    image_id: str
    cycle: int
    box: Box  # (y0, x0, y1, x1), half-open, full-resolution pixels
    metric: str
    score: float | None
    state: str  # 'asked' | 'answered' | 'skipped'
    label_path: str | None  # relative to the run directory
    asked_at: str
    answered_at: str | None
    answered_by: str | None
    painted_at: str | None = None  # when its answer was painted, where the answer's source tells (UTC);
    # skipped: when the annotator skipped it, where the skip's source tells (a task skipped in Label Studio)
    source_digest: str | None = None  # 'SIZE:SHA256' of the file its answer was read from, where known;
    # skipped: painting_digest of the painting the skip turned down (a withdrawn answer), where known

    @property
    def shape(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.box
        return y1 - y0, x1 - x0


def _region_from_row(row: tuple) -> Region:
    return Region(row[0], row[1], row[2], tuple(row[3:7]), *row[7:])


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _refuse_if(problems: list[str], what: str) -> None:
    if problems:
        raise LedgerError(f"{what} refused, nothing written: {first_of(problems, sep='; ')}")


def _not_pool_images(conn: sqlite3.Connection, image_ids: Sequence[str]) -> list[str]:
    """What makes `image_ids` not a list of distinct pool images: to be labelled whole, each once."""
    problems = [f"image '{i}' listed twice" for i, n in Counter(image_ids).items() if n > 1]
    for image_id in dict.fromkeys(image_ids):
        row = conn.execute("SELECT initial, acquired_whole_cycle FROM images WHERE image_id = ?",
                           (image_id,)).fetchone()
        if row is None:
            problems.append(f"image '{image_id}' is not registered")
        elif row[0] or row[1] is not None:
            problems.append(f"image '{image_id}' is already fully labelled")
    return problems


def _as_score(score: Any) -> float | None:
    """Plain float (sqlite3 cannot bind numpy.float32) or None."""
    return None if score is None else float(score)


def _region_id(value: Any) -> int:
    """A region id as a plain int; a bool (an int to Python) is refused, not read as region 0 or 1."""
    if isinstance(value, (bool, np.bool_)):
        raise LedgerError(f"{value!r} is not a region id")
    return int(value)


def _label_relpath(labels_dir: Path, region_id: int, png: bytes) -> tuple[str, bool]:
    """Where an answer of `region_id` encoded as `png` goes, and whether that file is still to be
    written: region_N.png for its first, else the first region_N.vK.png not on disk, or one already
    holding these very bytes (as an import killed before its commit leaves them). An answer never
    writes over a file: the one it replaces stays whole for any other ledger pointing to it (a
    backup put back)."""
    name, version = f"region_{region_id:06d}.png", 1
    while (labels_dir / name).exists():
        if _holds(labels_dir / name, png):
            return f"{LABELS_DIRNAME}/{name}", False
        version += 1
        name = f"region_{region_id:06d}.v{version}.png"
    return f"{LABELS_DIRNAME}/{name}", True


def _holds(path: Path, content: bytes) -> bool:
    try:
        return path.stat().st_size == len(content) and path.read_bytes() == content
    except OSError:
        return False


def _save_png(path: Path, png: bytes) -> None:
    """Atomic write: afterwards `path` holds the old file or the complete new one, never a torn one."""
    with atomic_write(path) as file:
        file.write(png)


def _png(patch: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(patch).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` raised as a LabelWriteError naming it."""
    try:
        yield
    except OSError as err:
        raise LabelWriteError(path, err) from err


def _as_label_patch(patch: Any) -> np.ndarray | None:
    """The patch as uint8, or None if it is not a 2-D integer array with values in 0..255."""
    array = np.asarray(patch)
    if array.ndim != 2 or array.dtype.kind not in "ui" or array.size == 0:
        return None
    if array.min() < 0 or array.max() > 255:
        return None
    return array.astype(np.uint8)


class RegionsByState:
    """The regions of one state, for a reader that has `regions(cycle, state)`."""

    def regions(self, cycle: int | None = None, state: str | None = None) -> list[Region]:
        raise NotImplementedError

    def asked(self, cycle: int | None = None) -> list[Region]:
        """Regions still waiting for an answer (skipped ones do not)."""
        return self.regions(cycle, "asked")

    def answered(self, cycle: int | None = None) -> list[Region]:
        return self.regions(cycle, "answered")

    def skipped(self, cycle: int | None = None) -> list[Region]:
        return self.regions(cycle, "skipped")


class Ledger(RegionsByState, AbstractContextManager):
    """The label ledger of one run. `path` is RUN_DIR/ledger.sqlite; labels go to RUN_DIR/labels/."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.run_dir = self.path.parent
        self.labels_dir = self.run_dir / LABELS_DIRNAME
        self.readonly = readonly
        if not readonly:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path, readonly)
        try:
            self._configure(readonly)
        except sqlite3.DatabaseError as err:
            self.close()
            raise ledger_error(self.path, err, reading=readonly) from None
        except BaseException:
            self.close()
            raise

    def _configure(self, readonly: bool) -> None:
        if not readonly:
            self._create_schema_if_new()
            self._migrate()
            self._remove_stray_temp_files()
        self._check_schema_version(READABLE_VERSIONS if readonly else (SCHEMA_VERSION,))
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(regions)")}
        later = [column if column in columns else "NULL" for column in _LATER_COLUMNS]  # NULL: unknown
        self._region_columns = f"{_VERSION_1_COLUMNS}, {', '.join(later)}"

    # --- plumbing -------------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema_if_new(self) -> None:
        with write_transaction(self._conn) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                return
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))

    def _migrate(self) -> None:
        """Version 2 added the 'skipped' state to the regions table's CHECK, which SQLite can only
        change by copying the table; version 3 adds the column painted_at, version 4 source_digest.
        One transaction: a kill leaves the old version intact."""
        with write_transaction(self._conn) as conn:
            version = self._schema_version()
            if version == 1:
                conn.execute(_REGIONS_TABLE.replace("CREATE TABLE regions", "CREATE TABLE regions_new", 1))
                conn.execute(f"INSERT INTO regions_new ({_VERSION_1_COLUMNS}) "
                             f"SELECT {_VERSION_1_COLUMNS} FROM regions")
                conn.execute("DROP TABLE regions")
                conn.execute("ALTER TABLE regions_new RENAME TO regions")
                for statement in _REGION_INDEXES:
                    conn.execute(statement)
            elif version in (2, 3):
                for column in _LATER_COLUMNS[version - 2:]:
                    conn.execute(f"ALTER TABLE regions ADD COLUMN {column} TEXT")
            else:
                return
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION),))

    def _remove_stray_temp_files(self) -> None:
        """Label temp files a killed writer left; under the write lock no answer is being written."""
        with write_transaction(self._conn):
            for stray in stray_temp_files(self.labels_dir, "region_*.png"):
                stray.unlink(missing_ok=True)

    def _schema_version(self) -> Any:
        if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            return None
        return self.get_meta("schema_version")

    def _check_schema_version(self, accepted: Collection[int]) -> None:
        version = self._schema_version()
        if version is None:
            raise LedgerError(f"{self.path}: not a label ledger (it holds no schema version)")
        if version not in accepted:  # a writer has migrated every version it reads
            *earlier, last = map(str, READABLE_VERSIONS)
            readable = f"{', '.join(earlier)} and {last}"
            raise LedgerError(f"{self.path}: ledger schema version {version!r}; this s4al reads schema versions "
                              f"{readable} (a newer s4al wrote it? open it with that one)")

    # --- meta -----------------------------------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value (e.g. seed, class names)."""
        encoded = json.dumps(value)  # before the transaction: a value JSON cannot hold writes nothing
        with write_transaction(self._conn) as conn:
            _set_meta(conn, key, encoded)

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # --- images ---------------------------------------------------------------------------------

    def register_images(self, records: Iterable[tuple[str, int, int]], initial: Collection[str] = ()) -> None:
        """Add the train pool as (image_id, height, width); `initial` ids are fully labelled.
        Re-registering the same image identically is a no-op; any difference is refused."""
        with write_transaction(self._conn) as conn:
            _register(conn, records, initial)

    def join_images(self, records: Iterable[tuple[str, int, int]], initial: Collection[str],
                    masked: Sequence[str], joined: dict) -> None:
        """Images and masks added to the dataset joining the run, in one write: `records` registered
        (`initial` of them labelled), the `masked` pool images labelled whole, `joined` added to the
        record of what joined when (JOINED)."""
        with write_transaction(self._conn) as conn:
            _register(conn, records, initial)
            _label_whole(conn, masked)
            _set_meta(conn, JOINED, json.dumps([*self.get_meta(JOINED, []), joined]))

    def images(self) -> list[ImageRecord]:
        """All registered images, in registration order."""
        query = "SELECT image_id, height, width, initial, acquired_whole_cycle FROM images ORDER BY rowid"
        return [ImageRecord(i, h, w, bool(init), acq) for i, h, w, init, acq in self._conn.execute(query)]

    def _image(self, image_id: str) -> ImageRecord:
        row = self._conn.execute(
            "SELECT image_id, height, width, initial, acquired_whole_cycle FROM images WHERE image_id = ?",
            (image_id,),
        ).fetchone()
        if row is None:
            raise KeyError(f"image '{image_id}' is not registered in {self.path}")
        return ImageRecord(row[0], row[1], row[2], bool(row[3]), row[4])

    def image_size(self, image_id: str) -> tuple[int, int]:
        record = self._image(image_id)
        return record.height, record.width

    def acquire_images(
        self, cycle: int, image_ids: Sequence[str], metric: str, scores: Sequence[float | None]
    ) -> None:
        """Mark whole images as labelled from `cycle` on (image-level baselines). The ledger stores
        no label for them: the caller uses the dataset's own label for fully labelled images."""
        if len(scores) != len(image_ids):
            raise LedgerError(f"acquire_images: {len(image_ids)} image ids but {len(scores)} scores")
        cycle, image_ids, scores = int(cycle), [str(i) for i in image_ids], [_as_score(v) for v in scores]
        problems = [f"cycle {cycle} is negative"] if cycle < 0 else []
        with write_transaction(self._conn) as conn:
            _refuse_if(problems + _not_pool_images(conn, image_ids), "acquire_images")
            now = utc_now()
            conn.executemany(
                "UPDATE images SET acquired_whole_cycle = ?, acquired_metric = ?, acquired_score = ?, "
                "acquired_at = ? WHERE image_id = ?",
                [(cycle, metric, score, now, image_id) for image_id, score in zip(image_ids, scores)],
            )

    def label_whole(self, image_ids: Sequence[str]) -> None:
        """Mark pool images as labelled whole by their own labels in the dataset (a mask given for
        them after the run began), as initial images are; their regions asked before stay as they are."""
        with write_transaction(self._conn) as conn:
            _label_whole(conn, image_ids)

    # --- regions: ask -----------------------------------------------------------------------------

    def ask(self, cycle: int, regions: Sequence[tuple[str, Box, str, float | None]]) -> list[int]:
        """Record the boxes bought in `cycle` as (image_id, (y0, x0, y1, x1), metric, score), all or
        nothing; returns their region ids in the same order. A box bought before is refused."""
        cycle = int(cycle)
        requests = [
            (str(image_id), tuple(int(v) for v in box), metric, _as_score(score))
            for image_id, box, metric, score in regions
        ]
        if not requests:
            return []
        with write_transaction(self._conn) as conn:
            _refuse_if(self._ask_problems(conn, cycle, requests), "ask")
            now = utc_now()
            return [
                conn.execute(
                    "INSERT INTO regions (image_id, cycle, y0, x0, y1, x1, metric, score, asked_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (image_id, cycle, *box, metric, score, now),
                ).lastrowid
                for image_id, box, metric, score in requests
            ]

    def _ask_problems(self, conn: sqlite3.Connection, cycle: int, requests: list) -> list[str]:
        problems = [f"cycle {cycle} is negative"] if cycle < 0 else []
        seen: set[tuple] = set()
        for image_id, box, metric, score in requests:
            where = f"image '{image_id}' box {box}"
            row = conn.execute(
                "SELECT height, width, initial, acquired_whole_cycle FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
            y0, x0, y1, x1 = box
            if row is None:
                problems.append(f"{where}: image not registered")
            elif not (0 <= y0 < y1 <= row[0] and 0 <= x0 < x1 <= row[1]):
                problems.append(f"{where}: not a non-empty box inside the {row[0]}x{row[1]} image")
            elif row[2] or row[3] is not None:
                problems.append(f"{where}: image is already fully labelled")
            if not isinstance(metric, str) or not metric:
                problems.append(f"{where}: metric must be a non-empty string")
            if score is not None and not math.isfinite(score):
                problems.append(f"{where}: score {score} is not finite")
            if (image_id, box) in seen:
                problems.append(f"{where}: listed twice")
            seen.add((image_id, box))
            bought = conn.execute(
                "SELECT region_id FROM regions WHERE image_id = ? AND y0 = ? AND x0 = ? AND y1 = ? AND x1 = ?",
                (image_id, *box),
            ).fetchone()
            if bought:
                problems.append(f"{where}: already bought as region {bought[0]}")
        return problems

    # --- regions: queries -------------------------------------------------------------------------

    def regions(self, cycle: int | None = None, state: str | None = None) -> list[Region]:
        """Regions in region_id order, optionally of one cycle and/or one state."""
        query = (f"SELECT {self._region_columns} FROM regions "
                 "WHERE (:cycle IS NULL OR cycle = :cycle) AND (:state IS NULL OR state = :state)")
        rows = self._conn.execute(query + " ORDER BY region_id", {"cycle": cycle, "state": state})
        return [_region_from_row(row) for row in rows]

    def answers_of_unknown_regions(self) -> list[str]:
        """The files of labels/ answering regions after the last this ledger holds: written by a
        later state of the run than the ledger (a ledger put back from a backup)."""
        last = self._conn.execute("SELECT MAX(region_id) FROM regions").fetchone()[0] or 0
        found = (re.fullmatch(r"region_(\d+)(\.v\d+)?\.png", path.name) for path in self.labels_dir.glob("region_*.png"))
        return sorted(f"{LABELS_DIRNAME}/{match.group(0)}" for match in found if match and int(match.group(1)) > last)

    # --- regions: answer --------------------------------------------------------------------------

    def answer(self, region_id: int, label_patch: np.ndarray, by: str, overwrite: bool = False) -> None:
        """Store the label patch of one asked region; see answer_many."""
        self.answer_many([(region_id, label_patch)], by, overwrite)

    def answer_many(self, answers: Sequence[tuple[int, np.ndarray]], by: str, overwrite: bool = False,
                    painted_at: Mapping[int, str | None] | None = None,
                    source_digests: Mapping[int, str | None] | None = None) -> None:
        """Store label patches (uint8 class ids, 255 = ignore, shaped like each box), all or nothing,
        with when each was painted where the answer's source tells (`painted_at`, region id -> UTC
        time) and the digest of the file it was read from (`source_digests`, region id -> 'SIZE:SHA256').
        Every answer is validated before anything is written; answering a region answered or skipped
        before is refused unless `overwrite`. PNGs are written under new names and fsynced first,
        then all rows are marked answered and pointed at them, in one transaction; the PNGs they
        replace stay. A PNG that cannot be written raises LabelWriteError, nothing stored."""
        answers = [(_region_id(region_id), label_patch) for region_id, label_patch in answers]
        if not answers:
            return
        painted_at, source_digests = painted_at or {}, source_digests or {}
        new_paths: dict[int, str] = {}
        written: set[str] = set()
        try:
            with write_transaction(self._conn) as conn:
                pngs = {region_id: _png(patch) for region_id, patch in
                        self._validated_patches(conn, answers, by, overwrite).items()}
                for region_id, png in pngs.items():
                    new_paths[region_id], to_write = _label_relpath(self.labels_dir, region_id, png)
                    if to_write:
                        written.add(new_paths[region_id])
                # called even with nothing to write: its fsync of labels/ makes a killed call's renames, which
                # the rows below may now point to, durable before the commit
                self._write_pngs({new_paths[r]: png for r, png in pngs.items() if new_paths[r] in written})
                now = utc_now()
                conn.executemany(
                    "UPDATE regions SET state = 'answered', label_path = ?, answered_at = ?, answered_by = ?, "
                    "painted_at = ?, source_digest = ? WHERE region_id = ?",
                    [(new_paths[region_id], now, by, painted_at.get(region_id), source_digests.get(region_id),
                      region_id) for region_id in pngs],
                )
        except Exception:  # not stored: the new PNGs no row points at go (an interrupt may come after the commit)
            for relpath in written - self._pointed_at(written):
                with suppress(OSError):
                    (self.run_dir / relpath).unlink(missing_ok=True)
            raise

    def _pointed_at(self, relpaths: Iterable[str]) -> set[str]:
        """Which of `relpaths` a row points at, read again (a commit that reported an error may still
        have been made); all of them where the ledger cannot be read."""
        relpaths = list(relpaths)
        try:
            rows = self._conn.execute(f"SELECT label_path FROM regions WHERE label_path IN "
                                      f"({', '.join('?' * len(relpaths))})", relpaths).fetchall()
        except sqlite3.Error:
            return set(relpaths)
        return {row[0] for row in rows}

    def _write_pngs(self, pngs: Mapping[str, bytes]) -> None:
        """Each PNG (by its path under the run folder) written whole and made durable; on a failed
        write the ones written are removed again, and LabelWriteError names the file that failed."""
        written: list[Path] = []
        try:
            with _writing(self.labels_dir):
                self.labels_dir.mkdir(exist_ok=True)
            for relpath, png in pngs.items():
                path = self.run_dir / relpath
                with _writing(path):
                    _save_png(path, png)
                written.append(path)
            with _writing(self.labels_dir):
                sync_folder(self.labels_dir)
        except BaseException:
            for path in written:
                with suppress(OSError):
                    path.unlink(missing_ok=True)
            raise

    def _validated_patches(
        self, conn: sqlite3.Connection, answers: Sequence[tuple[int, np.ndarray]], by: str, overwrite: bool
    ) -> dict[int, np.ndarray]:
        problems = [] if isinstance(by, str) and by else ["'by' must name the annotator"]
        patches: dict[int, np.ndarray] = {}
        for region_id, raw_patch in answers:
            row = conn.execute("SELECT y0, x0, y1, x1, state FROM regions WHERE region_id = ?", (region_id,)).fetchone()
            label_patch = _as_label_patch(raw_patch)
            if row is None:
                problems.append(f"region {region_id} was never asked")
                continue
            if region_id in patches:
                problems.append(f"region {region_id} answered twice in one call")
            if row[4] != "asked" and not overwrite:
                done = "is already answered" if row[4] == "answered" else "was skipped"
                problems.append(f"region {region_id} {done} (`s4al import` takes a later painting in its place: "
                                "import the file again)")
            box_shape = (row[2] - row[0], row[3] - row[1])
            if label_patch is None:
                problems.append(f"region {region_id}: label patch must be a 2-D integer array with values 0..255")
            elif label_patch.shape != box_shape:
                problems.append(f"region {region_id}: label patch is {label_patch.shape}, its box is {box_shape}")
            patches[region_id] = label_patch
        _refuse_if(problems, "answer")
        return patches

    def skip(self, region_ids: Iterable[int], by: str, withdraw: bool = False,
             skipped_at: Mapping[int, str | None] | None = None) -> list[int]:
        """Mark asked regions as skipped (the annotator declined them), all or nothing; returns the
        ids newly skipped. Regions skipped before are left as they are; answered ones are refused,
        unless `withdraw`: then their answers are taken back (their PNGs stay, as replaced ones do),
        each one's painting_digest kept, so that the same painting imported again does not answer it.
        `skipped_at`: region id -> when the annotator skipped it (UTC), where the skip's source tells,
        kept as its painted_at: on the clock of the paintings that later import compare with it."""
        region_ids = list(dict.fromkeys(_region_id(region_id) for region_id in region_ids))
        problems = [] if isinstance(by, str) and by else ["'by' must name who skipped"]
        with write_transaction(self._conn) as conn:
            states = self._states(conn, region_ids)
            problems += [f"region {i} was never asked" for i in region_ids if i not in states]
            if not withdraw:
                problems += [f"region {i} is already answered" for i in region_ids if states.get(i) == "answered"]
            _refuse_if(problems, "skip")
            newly = [i for i in region_ids if states[i] != "skipped"]
            answered = self.answered() if withdraw else []
            withdrawn = {region.region_id: self._answer_digest(region) for region in answered
                         if states.get(region.region_id) == "answered"}
            now = utc_now()
            skipped_at = skipped_at or {}
            conn.executemany("UPDATE regions SET state = 'skipped', answered_at = ?, answered_by = ?, "
                             "label_path = NULL, painted_at = ?, source_digest = ? WHERE region_id = ?",
                             [(now, by, skipped_at.get(region_id), withdrawn.get(region_id), region_id)
                              for region_id in newly])
        return newly

    def _answer_digest(self, region: Region) -> str | None:
        """painting_digest of answered `region`'s stored answer; None where it cannot be read."""
        try:
            return painting_digest(self.patch(region))
        except LedgerError:
            return None

    def turn_down(self, digests: Mapping[int, str]) -> None:
        """Keeps, for skipped regions, the painting_digest of a painting their skip overrules (region
        id -> digest), so that the same painting saved again later does not answer them."""
        with write_transaction(self._conn) as conn:
            conn.executemany("UPDATE regions SET source_digest = ? WHERE region_id = ? AND state = 'skipped'",
                             [(digest, region_id) for region_id, digest in digests.items()])

    @staticmethod
    def _states(conn: sqlite3.Connection, region_ids: list[int]) -> dict[int, str]:
        """region id -> state of those of `region_ids` that were asked. One lookup each: a list of
        ids bound in one statement fails beyond SQLite's limit of bound variables (32766 in its
        default build)."""
        lookup = "SELECT state FROM regions WHERE region_id = ?"
        rows = ((region_id, conn.execute(lookup, (region_id,)).fetchone()) for region_id in region_ids)
        return {region_id: row[0] for region_id, row in rows if row is not None}

    # --- label patches -----------------------------------------------------------------------------

    def patch(self, region: Region) -> np.ndarray:
        """The answered label patch of `region`, (y1 - y0, x1 - x0) uint8."""
        return read_patch(self.run_dir, region)

    def stored_patch(self, region: Region) -> np.ndarray | None:
        """patch(), or None where the stored answer is lost (its file missing or unreadable)."""
        try:
            return self.patch(region)
        except LedgerError:
            return None

    def has_patch(self, region: Region) -> bool:
        """Whether the file of answered `region`'s patch is there (looked for, not read)."""
        return (self.run_dir / region.label_path).is_file()


def painting_digest(patch: np.ndarray) -> str:
    """'patch:SHA256' of what a painting gives one region, class by pixel (UNPAINTED as stored):
    the same painting is known again whenever, and from whichever file, it is read."""
    return "patch:" + hashlib.sha256(np.ascontiguousarray(patch, dtype=np.uint8).tobytes()).hexdigest()


def read_patch(run_dir: Path, region: Region) -> np.ndarray:
    """The answered label patch of `region` in the run folder `run_dir`, (y1 - y0, x1 - x0) uint8."""
    if region.label_path is None:
        raise LedgerError(f"region {region.region_id} is not answered")
    path = run_dir / region.label_path
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as err:  # Pillow's kinds of a damaged file
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise LedgerError(f"{path}: the stored answer of {_named(region)} is missing or unreadable "
                          f"({reason}); {_recover_hint(run_dir, region, path)}") from err
    if array.dtype != np.uint8 or array.shape != region.shape:
        raise LedgerError(f"{path}: the stored answer of {_named(region)} is a {array.dtype} {array.shape} image, "
                          f"expected uint8 {region.shape}; {_recover_hint(run_dir, region, path)}")
    return array


def _named(region: Region) -> str:
    return f"region {region.region_id} (image '{region.image_id}', cycle {region.cycle})"


def _recover_hint(run_dir: Path, region: Region, path: Path) -> str:
    """How to write the lost answer of `region` again: any import answering it does, once a damaged
    file is gone (an import takes one there for the answer stored)."""
    delete = "delete the damaged file, then " if path.exists() else ""
    return (f"{delete}import its answer again to write it anew: `s4al import {shell(run_dir)} ANSWERS`, with the "
            f"masks or Label Studio export that answered it (or a folder holding the image's label as "
            f"{region.image_id}.png)")
