"""The key of a flow's artifact: the same key each run, so the UI shows its history."""

from __future__ import annotations


def artifact_key(*parts: str) -> str:
    """``parts`` joined by dashes, e.g. ("tick", "north_side") -> "tick-north-side": Prefect allows
    only lowercase letters, digits and dashes in a key, and a clinic's name may hold an underscore."""
    return "-".join(parts).replace("_", "-")
