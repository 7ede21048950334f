"""Active learning: acquisition scores, regions, the label ledger, annotators and the cycle."""
