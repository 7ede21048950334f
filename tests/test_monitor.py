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


def test_images_and_masks_joining_a_run_are_said_with_their_counts_and_names(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line each, as a wide terminal shows them
    monitor = Monitor(tmp_path, show_progress=False)
    try:
        monitor({"event": "joined", "at": "t", "before": "cycle 1 training", "labelled": ["n0"], "pool": ["n1", "n2"],
                 "masked": ["p0"]})
        monitor({"event": "joined", "at": "t", "before": "cycle 2 asking", "labelled": [], "pool": [],
                 "masked": ["p1", "p2"]})
    finally:
        monitor.close()
    assert capsys.readouterr().out.splitlines() == [
        "before cycle 1 training: 3 images added to the dataset joined the run (1 labelled, 2 to the pool: n0, n1, "
        "n2); 1 pool images given a mask are labelled whole (p0)",
        "before cycle 2 asking: 2 pool images given a mask are labelled whole (p1, p2)"]
