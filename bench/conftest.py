"""Benchmarks live outside testpaths: run them with `python -m pytest bench/ --benchmark-only`."""
