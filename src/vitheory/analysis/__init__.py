"""Statistics and figure helpers shared by the experiments' analyses (a low layer: numpy, scipy, pandas and
matplotlib only; nothing here knows about experiments, models or run folders)."""
