"""The benchmark harness (not part of the installed package): ``python benchmarks/run.py``."""
