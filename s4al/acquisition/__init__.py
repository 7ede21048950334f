"""Acquisition: the scores of a pool image's pixels, their region grid, and what to ask for."""
