"""The active-learning run: the cycle loop, the label ledger, the simulated annotator and what a run keeps."""
