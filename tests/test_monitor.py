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
