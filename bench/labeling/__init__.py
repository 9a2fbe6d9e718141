"""Pieces of `bench.labeling_loop` that need neither the app nor a model: datasets, tables, plots."""
