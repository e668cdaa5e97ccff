"""Scoring methods: LD-Pruner operator sweeps, EcoDiff masks, Diff-Pruning Taylor importance."""
