"""The run folder: its layout, making a new one, opening an existing one, and the lock on it.

    config.yaml          the run's complete config (written first, atomically; on resume only the
                         keys SAVED_ON_RESUME change: where its files are, how many cycles it has)
    ledger.sqlite        what was asked and answered (s4al/active/ledger.py), labels/ beside it, and
                         where each cycle stands (s4al/active/phases.py)
    splits/              the initial labelled images and the pool, for audits
    checkpoints/         cycle_C.pt, training state, saved atomically every train.checkpoint_every epochs
    cycles/cycle_C.json  one summary per finished cycle
    starts.jsonl         each start of the run: its command, s4al version and git commit, libraries, device
    metrics.jsonl, tensorboard/, queries/, report/

`s4al train` (full supervision) uses the same layout but for the active-learning parts: config.yaml,
checkpoints/cycle_0.pt, starts.jsonl, metrics.jsonl, tensorboard/ and, when it has finished, result.json.

A run folder is opened by one writing process at a time: `lock()` takes an exclusive lock that a
second process is refused with, naming the process that holds it. The lock goes with the process,
so a killed run leaves no stale lock behind."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s4al.atomic import stray_temp_files
from s4al.config import (
    COMPUTED_ON_RESUME, SAVED_ON_RESUME, ConfigError, RunConfig, config_differences, flat_config, load_run_config,
    save_config,
)
from s4al.errors import S4alError
from s4al.text import shell

CONFIG_FILE = "config.yaml"
LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = ".lock"
RESULT_FILE = "result.json"  # `s4al train`'s final scores
# What only a run that has begun writes: without a ledger beside any of these, answers were lost.
PROGRESS = ("labels", "checkpoints", "cycles", "splits")
# What an active-learning run writes and `s4al train` never does.
ACTIVE_LEARNING_ONLY = (LEDGER_FILE, "labels", "cycles", "splits")
RESUME_KEYS = (*COMPUTED_ON_RESUME, *SAVED_ON_RESUME)

_held_locks: dict[Path, int] = {}  # run folder -> locked file descriptor, for this process's life


def json_lines(path: Path) -> Iterator[tuple[str, dict | None]]:
    """Each line of one of a run's JSON-lines files (metrics.jsonl, starts.jsonl) with its record;
    None for a damaged line (cut short by a kill, edited by hand), which readers pass over."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        yield line, record if isinstance(record, dict) else None


def _forget_locks_in_child() -> None:
    """A forked child (a loader worker) shares the locked file; closing its copy keeps the lock the
    parent's alone, so the lock goes when the parent dies, whatever its children still do."""
    for fd in _held_locks.values():
        os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def _outside_resume_overrides(overrides: dict):
    for section, value in overrides.items():
        if not isinstance(value, dict):
            yield section
        else:
            yield from (f"{section}.{key}" for key in value if f"{section}.{key}" not in RESUME_KEYS)


def _this_process() -> str:
    return f"process {os.getpid()} on {socket.gethostname()}"


def _holder_written_in(fd: int) -> str:
    """The process and host the lock's holder wrote into the lock file."""
    written = os.read(fd, 256).decode(errors="replace").strip()
    return written if written.startswith("process") else f"process {written}" if written else "another process"


class RunFolderError(S4alError):
    """A run folder that cannot be made or opened as asked; the message names the path."""


class RunFolder:
    """One run's folder: where each of its files lives (the layout above), spelled only here."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.ledger_path = self.path / LEDGER_FILE
        self.splits_dir = self.path / "splits"
        self.checkpoints_dir = self.path / "checkpoints"
        self.queries_dir = self.path / "queries"  # s4al query's packages, one folder a cycle
        self.cycles_dir = self.path / "cycles"
        self.tensorboard_dir = self.path / "tensorboard"
        self.answers_dir = self.path / "answers"  # Label Studio exports downloaded, as received
        self.metrics_log = self.path / "metrics.jsonl"
        self.starts_log = self.path / "starts.jsonl"  # s4al/provenance.py
        self.result_path = self.path / RESULT_FILE

    def checkpoint_path(self, cycle: int) -> Path:
        return self.checkpoints_dir / f"cycle_{cycle}.pt"

    def last_checkpoint(self) -> Path | None:
        """The checkpoint of the latest cycle (cycle_10 after cycle_9), None before the first."""
        cycles = {int(m.group(1)): p for p in self.checkpoints_dir.glob("cycle_*.pt")
                  if (m := re.fullmatch(r"cycle_(\d+)\.pt", p.name))}
        return cycles[max(cycles)] if cycles else None

    def trained_checkpoint(self, cycle: int) -> Path:
        """The checkpoint of a cycle that has trained; RunFolderError, saying what it is for, if it is gone."""
        path = self.checkpoint_path(cycle)
        if not path.is_file():
            raise RunFolderError(f"{path}: gone, but cycle {cycle} has trained: the run scores the pool, pre-labels "
                                 f"the questions and goes on with the model it holds; put it back (from a backup), or "
                                 f"start a new run")
        return path

    def cycle_summary_path(self, cycle: int) -> Path:
        return self.cycles_dir / f"cycle_{cycle}.json"

    def summaries(self) -> list[dict]:
        """The finished cycles' summaries, in cycle order (cycle_10 after cycle_9)."""
        paths = {int(m.group(1)): p for p in self.cycles_dir.glob("cycle_*.json")
                 if (m := re.fullmatch(r"cycle_(\d+)\.json", p.name))}
        return [self._summary(paths[cycle]) for cycle in sorted(paths)]

    @staticmethod
    def _summary(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RunFolderError(f"{path}: not a cycle summary ({err})") from None

    # ---- making and opening ----------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, cfg: RunConfig, lock: bool = True) -> "RunFolder":
        """A new run folder holding `cfg`, locked; config.yaml is its first file, so a run killed at
        any later moment can be resumed. A folder whose run never began (its config alone: a start
        refused for its data or settings, or killed at once) is made anew with `cfg`."""
        folder = cls(Path(path))
        folder.make(lock)
        if folder.begun():
            raise RunFolderError(f"{folder.path}: already holds a run; continue it with --resume {shell(folder.path)}")
        folder.starts_log.unlink(missing_ok=True)  # of a start that never began
        folder.remove_stray_temp_files()  # of one killed as it wrote its config
        folder.save_config(cfg)
        return folder

    @classmethod
    def for_training(cls, path: Path, cfg: RunConfig, lock: bool = True) -> "RunFolder":
        """The folder of `s4al train`, holding `cfg`, locked: a new one, one whose training never
        saved a checkpoint, or the folder of an earlier training with the same config (but for
        where it computes), which then resumes. An active-learning run's folder, or a training with
        a checkpoint made with another config, is refused: its config would be overwritten and its
        checkpoint continued with other settings."""
        folder = cls(Path(path))
        folder.make(lock)
        found = [name for name in ACTIVE_LEARNING_ONLY if (folder.path / name).exists()]
        if found:
            raise RunFolderError(f"{folder.path}: holds an active-learning run ({', '.join(found)}); "
                                 "s4al train needs a folder of its own")
        if folder.checkpoint_path(0).exists():
            saved = folder.config()
            differences = config_differences(saved, cfg, may_differ=RESUME_KEYS)
            if differences:
                there, given = flat_config(saved), flat_config(cfg)
                shown = ", ".join(f"{key} ({there.get(key)!r} there, {given.get(key)!r} given)" for key in differences)
                raise RunFolderError(f"{folder.config_path}: this training was made with another config: {shown}; "
                                     "resume it with the config it was made with, or give a new --out")
        folder.save_config(cfg)
        return folder

    def make(self, lock: bool = True) -> None:
        """Creates the folder (a file in its place is refused) and, with `lock`, locks it."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: exists and is not a folder; give a new folder for the run")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"{self.path}: cannot make the run folder ({err})") from None
        if lock:
            self.lock()

    def save_config(self, cfg: RunConfig) -> None:
        try:
            save_config(cfg, self.config_path)
        except OSError as err:
            raise RunFolderError(f"{self.config_path}: cannot write the config ({err})") from None

    @classmethod
    def open(cls, path: Path, lock: bool = True) -> "RunFolder":
        """An existing run folder, locked (with `lock`); nothing is created in it."""
        folder = cls(Path(path))
        if not folder.path.is_dir():
            raise RunFolderError(f"{folder.path}: no such run folder")
        if not folder.config_path.is_file():
            raise RunFolderError(f"{folder.path}: not a run folder (no {CONFIG_FILE})")
        if lock:
            folder.lock()
        return folder

    def config(self, overrides: dict | None = None) -> RunConfig:
        """The saved config, with `overrides` limited to RESUME_KEYS."""
        refused = list(_outside_resume_overrides(overrides or {}))
        if refused:
            allowed = ", ".join(sorted(RESUME_KEYS))
            raise RunFolderError(f"{self.path}: a resumed run keeps the config it was made with; --set "
                                 f"{', '.join(refused)} refused (on resume only {allowed} may change)")
        try:
            return load_run_config(self.config_path, overrides)
        except ConfigError as err:
            raise RunFolderError(str(err)) from None

    # ---- state that must not be lost -------------------------------------------------------
    def begun(self) -> bool:
        """Whether a run here got past its start: a ledger, or anything only a started run writes."""
        return self.ledger_path.exists() or any((self.path / name).exists() for name in PROGRESS)

    def holds_training(self) -> bool:
        """Whether this is the folder of `s4al train`: checkpoints or its result, no active-learning state."""
        begun = [name for name in PROGRESS if (self.path / name).exists()]
        return not self.ledger_path.exists() and (begun == ["checkpoints"] or self.result_path.exists())

    def ledger_file(self) -> Path:
        """The ledger of a run folder, for a command that reads or answers a run; a folder
        without one is refused (a training's folder, or a begun run's missing ledger, saying so)."""
        if not self.check_ledger():
            if self.config_path.exists():
                raise RunFolderError(f"{self.path}: a run that never began (its {CONFIG_FILE} alone: a start refused "
                                     f"or killed at once); `s4al run --resume {shell(self.path)}` begins it")
            raise RunFolderError(f"{self.path}: not a run folder (no {LEDGER_FILE})")
        return self.ledger_path

    def check_ledger(self) -> bool:
        """True if the ledger exists; False for a run that never got as far as making one. A run
        that has begun (labels, checkpoints, cycles or splits on disk) without a usable ledger is
        refused: starting a new ledger would forget every answer and ask the same questions again."""
        if self.ledger_path.exists():
            if self.ledger_path.stat().st_size == 0:
                raise RunFolderError(f"{self.ledger_path}: empty (0 bytes); every answer of this run was in it. "
                                     "Restore it from a backup; nothing was changed")
            return True
        begun = [name for name in PROGRESS if (self.path / name).exists()]
        if self.holds_training():
            done = (f"its result is {self.result_path}" if self.result_path.exists() else
                    f"stopped part-way, it goes on with `s4al train --out {shell(self.path)}` and the same --config "
                    "and --set")
            raise RunFolderError(f"{self.path}: a folder of `s4al train` (full supervision: checkpoints/ but no "
                                 f"ledger, splits/ or cycles/), not an active-learning run ({done}); start one in a "
                                 "new folder with `s4al run --out`")
        if begun:
            on_disk = ", ".join(f"{name}/" for name in begun)
            raise RunFolderError(f"{self.ledger_path}: missing, though this run has begun ({on_disk} "
                                 "on disk); its answers were in it. Restore it from a backup; nothing was changed")
        return False

    def remove_stray_temp_files(self) -> None:
        """Temp files left by a kill mid-write (config, metrics log, checkpoints, cycle summaries,
        a downloaded export) or while the ledger was being built; the lock makes them ours."""
        strays = [*stray_temp_files(self.path), *stray_temp_files(self.checkpoints_dir),
                  *stray_temp_files(self.cycles_dir), *stray_temp_files(self.answers_dir),
                  *self.path.glob(f".{LEDGER_FILE}.*")]
        for stray in strays:
            stray.unlink(missing_ok=True)

    # ---- one writer ------------------------------------------------------------------------
    def lock(self) -> None:
        """Exclusive for this process (taking it again is a no-op); another process is refused."""
        key = self.path.resolve()
        if key in _held_locks:
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who shares it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_written_in(fd)
            os.close(fd)
            raise RunFolderError(f"{self.path}: in use by {holder}; wait for it to finish (one process at a time "
                                 "writes a run folder: a run, a query, an import or a skip)") from None
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            raise RunFolderError(f"{self.path}: its filesystem serves no file locks ({err.strerror}), which keep a "
                                 "second process from writing the run at once; put the run folder on a disk that "
                                 "serves them (a local disk, or a network filesystem mounted with lock support)") from None
        os.ftruncate(fd, 0)
        os.write(fd, _this_process().encode())
        _held_locks[key] = fd

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The lock for a block (a short write beside a run, e.g. importing answers); released after
        it unless this process held it before."""
        taken = self.path.resolve() not in _held_locks
        self.lock()
        try:
            yield
        finally:
            if taken:
                self.unlock()

    def unlock(self) -> None:
        fd = _held_locks.pop(self.path.resolve(), None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock

    def holder(self) -> str | None:
        """The process holding the lock now ("process N on HOST"), None if none does (or the
        filesystem serves no locks to tell); takes nothing."""
        if self.path.resolve() in _held_locks:
            return _this_process()
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted only while no writer holds it
            return None
        except BlockingIOError:
            return _holder_written_in(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
