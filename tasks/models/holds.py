"""What the latest model build left as it was, for whoever reads the models (the planner,
journeys, campaigns, dispatch, previews).

A build that failed in one file keeps the last good table of that model and of every model that
reads it (tasks/models/runner.py), and records them in ``state.model_builds``. Here that record
is read back: :func:`holds` says which models were not rebuilt and why, and
:meth:`Holds.why` answers "may I work from these tables?" for any list of tables read, so a
broken segment holds the journey on it and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb

from tasks.errors import UserFacingError


def latest_build(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The most recent build attempt (status, when, which file failed), or None."""
    row = con.execute(
        "SELECT build_id, started_at, finished_at, status, failed_file, error, summary "
        "FROM state.model_builds ORDER BY finished_at DESC, started_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    keys = ("build_id", "started_at", "finished_at", "status", "failed_file", "error")
    latest = dict(zip(keys, row[:-1], strict=True))
    summary = json.loads(row[-1]) if isinstance(row[-1], str) else (row[-1] or {})
    latest["held"] = summary.get("held") or {}
    return latest


@dataclass(frozen=True)
class Holds:
    """``everything``: why no model may be read (never built, or a build that held it all);
    ``models``: each model the latest build did not rebuild -> the file that broke."""

    everything: str | None = None
    models: dict[str, str] = field(default_factory=dict)

    def why(self, reads: Iterable[str]) -> str | None:
        """Why work reading ``reads`` (schema.table) must wait, or None when it may go on."""
        if self.everything:
            return self.everything
        held = sorted({r for r in reads if r in self.models})
        if not held:
            return None
        files = sorted({self.models[r] for r in held})
        return f"{', '.join(held)} not rebuilt ({', '.join(files)} failed to build)"


def holds(con: duckdb.DuckDBPyConnection) -> Holds:
    return _holds_of(latest_build(con))


def _holds_of(latest: dict | None) -> Holds:
    if latest is None:
        return Holds("the models have never been built (run `relay models build`)")
    if latest["status"] != "succeeded":
        return Holds(
            f"the latest model build ({latest['build_id']}) failed in {latest['failed_file']}"
        )
    return Holds(None, latest["held"])


def require_good_build(con: duckdb.DuckDBPyConnection, reads: Iterable[str] = ()) -> dict:
    """Refuse to work from models that are not there, or (``reads``) that the latest build
    held: a broken file holds what reads it, and only that."""
    latest = latest_build(con)
    if latest is None:
        raise UserFacingError("The models have never been built. Run `relay models build`.")
    why = _holds_of(latest).why(reads)
    if why:
        raise UserFacingError(
            f"Waiting for a good build: {why}. Fix the file and run `relay models build`."
        )
    return latest


def what_was_held(held: Iterable[str], rebuilt: int, new: Iterable[str] = ()) -> str:
    """The sentence a partial build's error gives about the models it held (``PartialBuild``);
    ``new``: those of them no build has made yet (a new segment broken from its first build
    has no last good table to keep)."""
    held, new = sorted(held), set(new)
    if not held:  # a data test that cannot run, a file outside sql/'s folders
        return f"held no model and rebuilt all {rebuilt} models."
    kept = [r for r in held if r not in new]
    parts = [f"kept the last good tables of {', '.join(kept)}"] if kept else []
    if len(kept) < len(held):
        made = ", ".join(r for r in held if r in new)
        parts.append(f"did not create {made} (new: no good build of it yet)")
    return (
        f"{' and '.join(parts)} (the broken file and what reads it) and rebuilt the other "
        f"{rebuilt} models. Journeys, campaigns and triggers that read a held model wait; the "
        "rest go on."
    )


def rolled_back(build_id: str, file: str, holds: tuple[str, ...] | None) -> str:
    """What a build's failure says happened (``BuildFailed``). ``holds`` None: the whole build
    was rolled back. Otherwise only this pass was: the build runs again holding what ``file``
    reaches (a broken model's Prefect task says so, not that everything waits)."""
    if holds is None:
        return (
            f"The build ({build_id}) was rolled back: every model is still the last good "
            "version, and planning/sending will wait for a good build."
        )
    held = ", ".join(holds) or file
    return (
        f"This pass of the build ({build_id}) was rolled back; the build runs again, keeping "
        f"the last good tables of {held} and of what reads them, and commits the rest."
    )
