"""Benchmarks: each plugs into the trainer through the small interface in `base.py`."""
