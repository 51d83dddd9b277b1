"""numpy, imported in the warm template (relay/warm.py ``PRELOAD``) so a forked run has it.

DuckDB imports numpy the first time a connection registers a Python function
(``create_function``, whatever its arguments), and every model build registers the SQL helpers
(tasks/models/functions.py ``register``): 0.06-0.17 s of every tick otherwise. Its OpenBLAS is
held to one thread here: the template starts no thread (a forked child keeps only the thread that
forked, tests/flows/test_warm.py), and the builds do no linear algebra. Only the template's own
environment is changed: a run's is replaced by the one Prefect gives it (``_become``).
"""

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import numpy  # noqa: E402, F401  (imported for its side effect: loaded once, before the forks)
