"""Experiment grids: train and evaluate many cells resumably (`imsm experiment`), then turn the
results into the paper's tables and plots (`imsm report`)."""
