"""Run reports: the HTML report and its figures, the comparison of runs, a run's status."""
