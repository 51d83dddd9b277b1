"""Benchmarks that print figures next to their targets. Run all with ``make bench`` (``python -m
bench``) or one with ``python -m bench sync``. They measure; tests never assert on wall-clock time."""
