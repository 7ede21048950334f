"""Runs commands as separate processes, a few at a time, within a time limit: the next starts
when one ends, and whatever still runs near the limit is interrupted (SIGINT, then SIGKILL), so
the call returns before the limit and every command that finished has written its output.

A command can say when it is worth starting (`Job.ready`, e.g. once another has made something it
can reuse): until then a later ready command takes the free slot in its place, but a slot is never
left idle for it, so nothing waits on a command that fails or never gets there. A command can also
say how long it is expected to take (`Job.seconds`): one that would fit a whole window but no longer
fits the time left is not started (a rerun starts it), since an interrupted command's work is lost
where its output cannot outlive the window, and it would slow the others meanwhile; one longer than
any window starts, to go on over reruns. Each command finds the time it was started in its
environment (STARTED_AT, seconds since the epoch), to count its own start-up in what it costs.
Given several GPUs, each command sees one (CUDA_VISIBLE_DEVICES): the one running the fewest.

Each command runs in its own process group, so an interrupt also reaches its loader workers, and
on Linux is killed if the window's process dies without stopping it (a SIGKILL from outside)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_SECONDS = 0.2
STARTED_AT = "WINDOW_STARTED_AT"


@dataclass(frozen=True)
class Job:
    label: str
    argv: tuple[str, ...]
    log: Path  # stdout and stderr, appended
    ready: Callable[[], bool] | None = field(default=None, compare=False)  # None: always
    seconds: float | None = field(default=None, compare=False)  # expected to take; None: unknown


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # exited with an error before the stop
    stopped: list[str] = field(default_factory=list)  # interrupted at the limit
    not_started: list[str] = field(default_factory=list)
    too_long: list[str] = field(default_factory=list)  # not started: would fit a rerun, not the time left


def stop_grace(seconds: float) -> float:
    """How long before the limit the running commands are interrupted: 5% of it, 3-30 s."""
    return min(30.0, max(3.0, 0.05 * seconds))


def _die_with_the_window() -> None:
    """In the child before it runs (Linux): SIGKILL when the window's process dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _start(job: Job, gpu: str | None) -> subprocess.Popen:
    job.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, STARTED_AT: repr(time.time())} | ({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})
    with job.log.open("a") as log:
        log.write(f"$ {' '.join(job.argv)}\n")
        log.flush()
        return subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                preexec_fn=_die_with_the_window if sys.platform == "linux" else None)


def _least_busy(gpus: Sequence[str], placed: dict[Job, str | None], running: dict) -> str | None:
    """The GPU that runs the fewest jobs (the first of them on a tie); None without GPUs given."""
    busy = [gpu for job, gpu in placed.items() if job in running]
    return min(gpus, key=busy.count) if gpus else None


def _next(waiting: deque[Job]) -> Job:
    """Takes the first waiting job that is ready, else the first one."""
    job = next((job for job in waiting if job.ready is None or job.ready()), waiting[0])
    waiting.remove(job)
    return job


def _drop_too_long(waiting: deque[Job], left: float, whole: float, outcome: Outcome, elapsed: float, report) -> None:
    """Moves the waiting jobs that would fit in `whole` seconds but not in the `left` ones into
    `outcome`: they never fit later in this window, and a rerun fits them."""
    for job in [job for job in waiting if job.seconds is not None and left < job.seconds <= whole]:
        waiting.remove(job)
        outcome.too_long.append(job.label)
        report(f"[window {elapsed:.0f} s] {job.label} not started: expected to take {job.seconds:.0f} s, "
               f"{left:.0f} s left")


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass


def _collect(running: dict[Job, subprocess.Popen], outcome: Outcome, elapsed: float, report) -> None:
    """Moves the jobs that have ended from `running` into `outcome`."""
    for job, process in list(running.items()):
        if process.poll() is None:
            continue
        _signal(process, signal.SIGKILL)  # whatever it left behind in its process group
        del running[job]
        (outcome.finished if process.returncode == 0 else outcome.failed).append(job.label)
        result = "finished" if process.returncode == 0 else f"failed (exit {process.returncode})"
        report(f"[window {elapsed:.0f} s] {job.label} {result}")


def _stop(running: dict[Job, subprocess.Popen], outcome: Outcome, kill_at: float, elapsed, report) -> None:
    """SIGINT to every running job, SIGKILL to those still alive at `kill_at` (monotonic time), and
    to what is left of each one's process group once it has ended."""
    for process in running.values():
        _signal(process, signal.SIGINT)
    for job, process in running.items():
        try:
            process.wait(timeout=max(0.0, kill_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()
        _signal(process, signal.SIGKILL)
        outcome.stopped.append(job.label)
        report(f"[window {elapsed():.0f} s] {job.label} stopped at the limit")


def _unfailing(report: Callable[[str], None]) -> Callable[[str], None]:
    """`report`, whose failure to write (its reader gone: a pipe stopped with the window) stops no job's end."""
    def said(line: str) -> None:
        try:
            report(line)
        except OSError:
            pass
    return said


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_window(jobs: list[Job], seconds: float, parallel: int, report=print, gpus: Sequence[str] = ()) -> Outcome:
    """Runs `jobs` in order (a ready one before one that is not), `parallel` at a time (on each of
    `gpus`, CUDA_VISIBLE_DEVICES ids, where given), but for those that would fit a rerun and not
    the time left, and returns within `seconds`. Interrupted itself (Ctrl-C), it stops its jobs the
    same way, within stop_grace(seconds)."""
    report = _unfailing(report)
    started = time.monotonic()
    grace = stop_grace(seconds)
    deadline = started + seconds
    waiting, running, outcome = deque(jobs), {}, Outcome()
    placed: dict[Job, str | None] = {}
    main = threading.current_thread() is threading.main_thread()
    terminate = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if main else None  # e.g. `timeout`
    try:
        while (waiting or running) and time.monotonic() < deadline - grace:
            _drop_too_long(waiting, deadline - grace - time.monotonic(), seconds - grace, outcome,
                           time.monotonic() - started, report)
            while waiting and len(running) < parallel * max(1, len(gpus)):
                job = _next(waiting)
                placed[job] = gpu = _least_busy(gpus, placed, running)
                running[job] = _start(job, gpu)
                where = "" if gpu is None else f" on GPU {gpu}"
                report(f"[window {time.monotonic() - started:.0f} s] started {job.label}{where} (log: {job.log})")
            time.sleep(POLL_SECONDS)
            _collect(running, outcome, time.monotonic() - started, report)
    finally:
        _collect(running, outcome, time.monotonic() - started, report)  # those that ended in the last poll
        kill_at = min(deadline, time.monotonic() + grace) - 1
        _stop(running, outcome, kill_at, lambda: time.monotonic() - started, report)
        outcome.not_started = [job.label for job in waiting]
        if main:
            signal.signal(signal.SIGTERM, terminate)
    return outcome
