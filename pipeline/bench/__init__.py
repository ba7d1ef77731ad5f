"""Benchmarks: the pipeline timed side by side with a bare JAX loop and PyTorch, FLOPs, MFU, reports."""
