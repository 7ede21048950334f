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
