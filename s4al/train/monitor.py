"""Live view of a run: a rich progress bar on the terminal (a line now and then in a log file) and
TensorBoard scalars on disk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from time import monotonic

from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from torch.utils.tensorboard import SummaryWriter

LINE_EVERY_S = 60.0  # with the output in a file (nohup, a batch job's log), a bar's line at most this often


class Monitor:
    """Callable given to the trainer and the active-learning run: receives {"event": "step"|"eval"|"score"|
    "joined", ...} records."""

    def __init__(self, log_dir: Path, show_progress: bool = True, log_every: int = 10, console: Console | None = None):
        console = console or get_console()
        live = console.is_terminal or console.is_jupyter
        self.log_dir = Path(log_dir)
        self.writer: SummaryWriter | None = None  # the cycle's (log_dir/cycle_N, a TensorBoard run of its own)
        self.writer_cycle: int | None = None
        self.log_every = log_every
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            get_time=monotonic,
            disable=not (show_progress and live),  # bars drawn once, at the end, say nothing in a log
        )
        self.lines = show_progress and not live
        self.said_at: dict[str, float] = {}  # by description: when a line last said the bar
        self.unsaid: dict[str, str] = {}  # by description: the bar's latest line, where not said yet
        self.tasks: dict[str, TaskID] = {}  # by description: a bar per cycle for its training, one for its pool scoring
        self.steps_before: dict[int, int] = {}  # per cycle, the steps trained before this process (a resume)
        self.progress.start()

    def __call__(self, record: dict) -> None:
        getattr(self, f"_{record['event']}")(record)

    def _step(self, r: dict) -> None:
        # the trainer's seconds count from this process's start: a resumed cycle's steps before it took none
        before = self.steps_before.setdefault(r["cycle"], r["step"] - 1)
        speed = r["seconds"] / max(r["step"] - before, 1)
        losses = " ".join(f"{key[5:]} {r[key]:.3f}" for key in ("loss/sup", "loss/unsup") if key in r)
        self._bar(f"cycle {r['cycle']}", r["total"], r["step"], f"{losses} {speed:.2f}s/it")
        if r["step"] % self.log_every == 0:
            for key, value in r.items():
                if key.startswith(("loss/", "eta/")) or key == "lr":
                    self._writer(r).add_scalar(f"train/{key}", value, r["step"])

    def _score(self, r: dict) -> None:
        """Pool images scored for the cycle's questions (ActiveLearningRun)."""
        self._bar(f"cycle {r['cycle']} scoring the pool", r["total"], r["images"], "images")

    def _bar(self, description: str, total: int | None, completed: int, status: str) -> None:
        if description not in self.tasks:  # from where it is: a resumed cycle's steps before are no speed
            self.tasks[description] = self.progress.add_task(description, total=total, completed=completed, status="")
        self.progress.update(self.tasks[description], completed=completed, status=status)
        if self.lines:
            self._line(description, total, completed, status)

    def _line(self, description: str, total: int | None, completed: int, status: str) -> None:
        """The bar as a line of text: its first update, its last, and one a minute between (a bar of
        no total, which has no last, says its latest as the monitor closes)."""
        now, finished = monotonic(), total is not None and completed >= total
        left = next(task for task in self.progress.tasks if task.id == self.tasks[description]).time_remaining
        when = f", {timedelta(seconds=round(left))} left" if left is not None and not finished else ""
        of = "" if total is None else f"/{total}"
        self.unsaid[description] = f"{description}: {completed}{of} {status}{when}"
        if finished or now - self.said_at.get(description, now - LINE_EVERY_S) >= LINE_EVERY_S:
            self.said_at[description] = now
            self.progress.console.print(self.unsaid.pop(description), highlight=False)

    def _writer(self, r: dict) -> SummaryWriter:
        """The cycle's writer; made at this process's first record of the cycle, whose step and those
        after it, logged before by a process killed after its last checkpoint, it hides (purge_step)."""
        if r["cycle"] != self.writer_cycle:
            if self.writer is not None:  # an earlier cycle's: it logs no more
                self.writer.close()
            first = self.steps_before.get(r["cycle"], r["step"] - 1) + 1
            self.writer = SummaryWriter(str(self.log_dir / f"cycle_{r['cycle']}"), purge_step=first)
            self.writer_cycle = r["cycle"]
        return self.writer

    def _eval(self, r: dict) -> None:
        writer, step = self._writer(r), r["step"]
        writer.add_scalar("val/miou", r["miou"], step)
        for name, value in r["iou"].items():
            if value is not None:
                writer.add_scalar(f"val_iou/{name}", value, step)
        self.progress.console.print(f"cycle {r['cycle']} epoch {r['epoch']}: val mIoU {100 * r['miou']:.1f}%")

    def _joined(self, r: dict) -> None:
        """Images and masks added to the dataset, as they join the run (ActiveLearningRun)."""
        self.progress.console.print(f"before {r['before']}, joined the run: {r['text']}")

    def close(self) -> None:
        for line in self.unsaid.values():
            self.progress.console.print(line, highlight=False)
        self.unsaid.clear()
        self.progress.stop()
        if self.writer is not None:
            self.writer.close()
