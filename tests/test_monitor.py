import io
import time

from rich.console import Console

import s4al.train.monitor as monitor_module
from s4al.train.monitor import Monitor


def test_each_cycle_gets_its_own_bar_even_with_the_same_step_count(tmp_path):
    monitor = Monitor(tmp_path, show_progress=False)
    try:
        for cycle in (0, 1):
            for step in (1, 2, 3, 4):
                monitor({"event": "step", "cycle": cycle, "step": step, "total": 4, "seconds": 0.1 * step,
                         "loss/sup": 1.0})
        assert [(t.description, t.completed, t.total) for t in monitor.progress.tasks] == [
            ("cycle 0", 4, 4), ("cycle 1", 4, 4)]
    finally:
        monitor.close()


def test_a_resumed_cycles_speed_counts_the_steps_this_process_trained(tmp_path):
    monitor = Monitor(tmp_path, show_progress=False)
    try:  # resumed at step 100 of 200: two steps in 0.5 s, not 102 steps
        for step, seconds in ((101, 0.25), (102, 0.5)):
            monitor({"event": "step", "cycle": 0, "step": step, "total": 200, "seconds": seconds, "loss/sup": 1.0})
        (task,) = monitor.progress.tasks
        assert task.fields["status"] == "sup 1.000 0.25s/it" and task.completed == 102
    finally:
        monitor.close()


def test_pool_scoring_gets_a_bar_of_its_own_beside_the_cycles_training(tmp_path):
    monitor = Monitor(tmp_path, show_progress=False)
    try:
        monitor({"event": "step", "cycle": 0, "step": 4, "total": 4, "seconds": 0.4})
        for done in (5, 10, 12):
            monitor({"event": "score", "cycle": 0, "images": done, "total": 12})
        monitor({"event": "score", "cycle": 1, "images": 3, "total": None})  # one process's share of a job's pool
        assert [(t.description, t.completed, t.total) for t in monitor.progress.tasks] == [
            ("cycle 0", 4, 4), ("cycle 0 scoring the pool", 12, 12), ("cycle 1 scoring the pool", 3, None)]
    finally:
        monitor.close()


def test_images_and_masks_joining_a_run_are_said_as_they_join(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line, as a wide terminal shows it
    monitor = Monitor(tmp_path, show_progress=False)
    try:
        monitor({"event": "joined", "before": "cycle 1 training", "text": "2 images added to the dataset (...)"})
    finally:
        monitor.close()
    assert capsys.readouterr().out == "before cycle 1 training, joined the run: 2 images added to the dataset (...)\n"


def test_a_resumed_cycle_logs_over_the_steps_its_killed_process_logged_after_its_checkpoint(tmp_path):
    """Killed at step 50 with a checkpoint at step 20: TensorBoard shows steps 30-50 once, as trained again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def train(steps, loss, cycle):
        monitor = Monitor(tmp_path, show_progress=False)
        try:
            for step in steps:
                monitor({"event": "step", "cycle": cycle, "step": step, "total": 60, "seconds": 0.1, "loss/sup": loss})
            monitor({"event": "eval", "cycle": cycle, "step": steps[-1], "epoch": 1, "miou": loss, "iou": {"Sky": loss}})
        finally:
            monitor.close()

    for steps, loss, cycle in ((range(1, 61), 1.0, 1), (range(1, 51), 2.0, 0), (range(21, 61), 3.0, 0)):
        train(steps, loss, cycle)  # cycle 1: another cycle's curve is its own
        time.sleep(1.01)  # event files are read in the order of their names, which start with the second
    runs = {}
    for cycle in (0, 1):
        events = EventAccumulator(str(tmp_path / f"cycle_{cycle}"))
        events.Reload()
        runs[cycle] = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert runs[0] == {"train/loss/sup": [(10, 2.0), (20, 2.0), (30, 3.0), (40, 3.0), (50, 3.0), (60, 3.0)],
                       "val/miou": [(60, 3.0)], "val_iou/Sky": [(60, 3.0)]}  # the first process's at 50 is hidden
    assert runs[1] == {"train/loss/sup": [(step, 1.0) for step in range(10, 61, 10)], "val/miou": [(60, 1.0)],
                       "val_iou/Sky": [(60, 1.0)]}


def test_in_a_log_file_a_bar_is_a_line_at_its_start_once_a_minute_and_at_its_end(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(monitor_module, "monotonic", lambda: clock[0])
    log = io.StringIO()  # not a terminal
    monitor = Monitor(tmp_path, console=Console(file=log, width=200))
    try:
        for step in range(1, 151):  # a step a second
            clock[0] += 1.0
            monitor({"event": "step", "cycle": 0, "step": step, "total": 150, "seconds": float(step), "loss/sup": 0.5})
        for done in (100, 300):
            monitor({"event": "score", "cycle": 0, "images": done, "total": 300})
        for done in (3, 5):  # one process's share of a job's pool: no total, so no last update but the latest
            monitor({"event": "score", "cycle": 1, "images": done, "total": None})
    finally:
        monitor.close()
    assert log.getvalue().splitlines() == [
        "cycle 0: 1/150 sup 0.500 1.00s/it",
        "cycle 0: 61/150 sup 0.500 1.00s/it, 0:01:29 left",
        "cycle 0: 121/150 sup 0.500 1.00s/it, 0:00:29 left",
        "cycle 0: 150/150 sup 0.500 1.00s/it",
        "cycle 0 scoring the pool: 100/300 images",
        "cycle 0 scoring the pool: 300/300 images",
        "cycle 1 scoring the pool: 3 images",
        "cycle 1 scoring the pool: 5 images",  # as the monitor closes
    ]


def test_quiet_says_nothing_and_a_terminal_gets_the_bars_without_lines(tmp_path):
    for console, show_progress in ((Console(file=io.StringIO(), width=200), False),
                                   (Console(file=io.StringIO(), width=200, force_terminal=True), True)):
        monitor = Monitor(tmp_path, show_progress=show_progress, console=console)
        try:
            monitor({"event": "step", "cycle": 0, "step": 1, "total": 2, "seconds": 1.0, "loss/sup": 0.5})
        finally:
            monitor.close()
        assert "cycle 0: 1/2" not in console.file.getvalue()  # no line (a drawn bar has no colon after its name)
        assert (console.file.getvalue() != "") == show_progress  # the bar, drawn
