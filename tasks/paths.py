"""Where things are on disk: the project root, the clinics folder and the data folder.

Everything in ``tasks/`` that needs a path asks here; ``relay/`` (the CLI) re-exports these, never
the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def clinics_dir() -> Path:
    """Where clinic folders (clinics/<clinic>/clinic.yaml) live: the repo's clinics/, or
    RELAY_CLINICS_DIR, e.g. a private repository of clinic configurations beside this one."""
    return Path(os.environ.get("RELAY_CLINICS_DIR") or PROJECT_ROOT / "clinics")


def data_dir() -> Path:
    """Where clinic databases and the outbox live unless a clinic's config says otherwise."""
    return Path(os.environ.get("RELAY_DATA_DIR", PROJECT_ROOT / "data"))
