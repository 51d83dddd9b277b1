"""Where things are on disk: the project root, the clinics folder and the data folder; and
reading the text files people edit (clinic.yaml, sql/) as UTF-8.

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


def misnamed(source: Path, clinic: object, clinics: Path | None = None) -> str | None:
    """Why a clinic folder's clinic.yaml is refused, or None: its ``clinic:`` is not the folder's
    name. A clinic is found by its folder (its ticks and deployments load
    ``clinics/<clinic>/clinic.yaml``; its database defaults to ``<data>/<clinic>.duckdb``), so a
    copy of ``clinics/demo/`` still saying ``clinic: demo`` would deploy and tick the demo's
    folder, never its own. Only a file in a clinics folder (``clinics``, default clinics_dir())."""
    folder = source.resolve().parent
    if folder.parent != (clinics or clinics_dir()).resolve() or folder.name == clinic:
        return None
    return (
        f"{source}: clinic: {clinic} is not its folder's name ({folder.name}): a clinic is found "
        "by its folder (its ticks, deployments and database go by that name), so this file would "
        f"run as another clinic or not at all. Set clinic: {folder.name}, or rename the folder."
    )


def data_dir() -> Path:
    """Where clinic databases and the outbox live unless a clinic's config says otherwise."""
    return Path(os.environ.get("RELAY_DATA_DIR", PROJECT_ROOT / "data"))


def read_edited_text(path: Path, error: type[Exception], shown: object = None) -> str:
    """A file a person edits (clinic.yaml, a model in sql/), as UTF-8 (a byte order mark from a
    Windows editor dropped). One saved in another encoding (cp1252's "Caf\u00e9") or that cannot
    be read raises ``error`` naming the file (``shown``, default ``path``), not a traceback."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{shown or path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
            f"{exc.start}): save it as UTF-8 (your editor's 'Save with encoding')."
        ) from None
    except OSError as exc:  # a folder named *.sql, a broken link, no permission
        raise error(f"{shown or path}: cannot be read ({exc.strerror or exc}).") from None
