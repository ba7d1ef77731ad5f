"""Hyperparameter sweeps: search spaces, strategies, vmapped populations, sweep folders."""
