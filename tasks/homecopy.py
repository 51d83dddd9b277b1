"""A command that changes a clinic's state outside its tick does so on the clinic's current copy.

``relay campaign send --confirm`` (and the campaign deployment), ``relay campaign cancel``,
``relay import-unsubscribes``, ``relay patients opt-in`` and ``relay ledger resolve`` write the
clinic's database on the
machine they run on, and so do the tick's steps run by hand (``relay sync``, ``relay feedback``,
``relay models build``: :func:`writing_current_copy`). Run on a machine holding an old copy
(the clinic moved away: the copy stays behind, one generation older) or a database of its own, they used to succeed there, saying a
campaign was queued or cancelled, while the home planned and sent as before: a campaign
"cancelled" went out all the same, an imported unsubscribe was never honoured. The home's tick
never reads another machine's copy, so the command now refuses, naming the home
(tasks/home.py: the same record and the same reasons the tick's guard gives).

A copy that finds the home recorded at a newer generation than its own remembers it
(:func:`note_superseded`; the move marks the copy it leaves, :func:`left_behind`): it stays an
old copy even if the server's record is later put back to before the move.

The database's identity decides, not the machine's name: on the home, a shell without
``RELAY_MACHINE`` is still the home's. Without a shared Prefect server, or for a clinic with no
home yet, there is nothing to compare with and nothing is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from tasks.errors import UserFacingError
from tasks.home import (
    Home,
    HomeRefused,
    HomeStore,
    Identity,
    PrefectHomes,
    read_identity,
    refusal,
    refuse_another_clinics,
    shared_server,
    this_machine,
)


def require_current_copy(
    con: duckdb.DuckDBPyConnection,
    clinic: str,
    *,
    store: HomeStore | None = None,
    nothing: str = "nothing changed",
) -> None:
    """Raise HomeRefused unless ``con`` is the clinic's current copy (the home's lineage and
    generation, no move under way); its message begins with the clinic and ``nothing``."""
    if store is None:
        if not shared_server():
            return
        store = PrefectHomes()
    home = store.read(clinic)
    if home is None:
        return
    identity = read_identity(con)
    if identity is not None and identity.clinic != clinic:
        return  # another clinic's file: the command's own checks say so
    identity = note_superseded(con, clinic, identity, home)
    if identity is None and not home.moving_to:
        reason: str | None = f"this database is new: {clinic}'s is on '{home.machine}'."
    else:
        reason = refusal(clinic, home.machine, identity, home)  # identity decides, not the name
    if reason:
        raise _sent_home(clinic, nothing, reason, home)


@contextlib.contextmanager
def writing_current_copy(
    db_path: Path, clinic: str, *, nothing: str, store: HomeStore | None = None
) -> Iterator[None]:
    """Around one of the tick's steps run by hand (``relay sync``, ``relay feedback``, ``relay
    models build``): HomeRefused unless this machine's database is the clinic's current copy,
    checked as :func:`require_current_copy` does and then held (tasks.warehouse.hold) until the
    step ends, so a move cannot back the database up in between and leave the step's writes on
    the old copy. On a machine without the clinic's database while its home is another (or a
    move is under way) it refuses before making one: such a sync made a second copy of the
    clinic's patients where the clinic does not live, which no tick ever read. Without a shared
    server, or for a clinic with no home yet, nothing is checked or held but that the database
    is not another clinic's (two clinic.yaml naming one file: a sync wrote one clinic's Cliniko
    rows into the other's, whose next tick planned messages to them)."""
    from tasks.warehouse import hold, open_db

    if store is None and shared_server():
        store = PrefectHomes()
    home = store.read(clinic) if store is not None else None
    if home is None:
        _not_another_clinics(Path(db_path), clinic, nothing)
        yield
        return
    if not Path(db_path).exists():
        machine, reason = this_machine(), None
        if home.moving_to or (machine == home.machine and home.database):
            reason = refusal(clinic, machine, None, home)  # a move, or the home's file is gone
        elif machine != home.machine:
            reason = (
                f"this machine ('{machine}') has no database of {clinic}: it lives on "
                f"'{home.machine}' (generation {home.generation})."
            )
        if reason:
            raise _sent_home(clinic, nothing, reason, home)
        yield  # the home, before any database was bound to it: the first tick binds this one
        return
    with hold(db_path):
        with open_db(db_path) as con:
            refuse_another_clinics(read_identity(con), clinic, nothing)
            require_current_copy(con, clinic, store=store, nothing=nothing)
        yield


def _sent_home(clinic: str, nothing: str, reason: str, home: Home) -> HomeRefused:
    return HomeRefused(
        f"{clinic}: {nothing}: {reason} Run this command on '{home.machine}', where "
        f"the clinic lives (`relay clinic home {clinic}` shows it)."
    )


def _not_another_clinics(db_path: Path, clinic: str, nothing: str) -> None:
    """Without a home to compare with: refuse only a database holding another clinic."""
    from tasks.warehouse import open_db

    if not db_path.exists():
        return
    with open_db(db_path, read_only=True) as con:
        try:
            identity = read_identity(con)
        except duckdb.CatalogException:  # a file from before identities: nothing to compare
            return
    refuse_another_clinics(identity, clinic, nothing)


def require_moved_copy(db_path: Path, clinic: str, home: Home) -> None:
    """``relay clinic move``, before its backup (and on a run again, before the restore of a
    backup it made): HomeRefused unless the database is the home's copy, its lineage and
    generation (the move under way aside). The move checked the machine's name only, which a data
    folder holding an old copy passes (RELAY_MACHINE set to the home's name where a lost
    machine's disk is mounted, the wrong folder): that copy became the clinic's next
    generation, forgetting (and sending again) all the home had sent since."""
    from tasks.warehouse import open_db

    with open_db(db_path) as con:
        identity = read_identity(con)
    reason: str | None = f"this database is new: {clinic}'s is on '{home.machine}'."
    if identity is not None:
        reason = refusal(clinic, home.machine, identity, replace(home, moving_to=None))
    if reason:
        raise HomeRefused(
            f"{clinic}: nothing moved: {reason} The move copies the clinic's current copy "
            "only: check RELAY_DATA_DIR (and clinic.yaml's database:) on this machine. "
            f"{clinic} stays on '{home.machine}', resumed."
        )


def check_backup(db_path: Path, clinic: str, *, wait_seconds: float) -> str | None:
    """Before ``relay clinic backup``: HomeRefused unless the database is the clinic's current
    copy. A nightly backup left on the machine the clinic moved away from copied its old copy,
    named by the time like any backup, so the newest file of the backup folder was an old
    generation: put in place after a lost machine, it forgot (and sent again) what the home
    sent since. A server that does not answer does not stop a backup: the warning to print."""
    import httpx

    from tasks.warehouse import open_db

    with open_db(db_path, wait_seconds=wait_seconds) as con:
        try:
            require_current_copy(con, clinic, nothing="nothing backed up")
        except (httpx.HTTPError, OSError) as exc:
            return (
                f"warning: could not check that this is {clinic}'s current copy (the Prefect "
                f"server did not answer: {type(exc).__name__}); backing it up all the same."
            )
    return None


def note_superseded(
    con: duckdb.DuckDBPyConnection, clinic: str, identity: Identity | None, home: Home | None
) -> Identity | None:
    """Remember in this copy of ``clinic`` that its home is recorded at a newer generation than
    the copy's own (no move under way): it is an old copy for good. A record put back to an
    older state later (the Prefect server's database restored from a backup taken before a move)
    would name this copy's generation again, and its ticks would send again all the newer one
    sent; the copy refuses instead (tasks.home.refusal). Records only move forward otherwise, so
    nothing else meets the mark; writing an identity (a restore, a claim) clears it. Returns
    the identity as it now is (a read-only connection: marked here, not stored)."""
    if (
        identity is None
        or home is None
        or identity.clinic != clinic
        or home.moving_to
        or home.generation <= max(identity.generation, identity.superseded_by or 0)
    ):
        return identity
    with contextlib.suppress(duckdb.InvalidInputException):  # read-only: the next writer marks
        con.execute(
            "UPDATE state.clinic_identity SET superseded_by = ?, superseded_on = ?, "
            "updated_at = ? WHERE clinic = ?",
            [home.generation, home.machine, datetime.now(UTC), clinic],
        )
    return replace(identity, superseded_by=home.generation, superseded_on=home.machine)


def left_behind(db_path: Path, clinic: str, store: HomeStore, echo) -> None:
    """After a move, on the machine it left: the copy still here is marked an old one
    (note_superseded) while the server's record is the move's. Without the mark, a server whose
    database was put back to before the move named this machine home again, at this copy's
    generation, and its next tick sent again what the new home had sent. A copy that cannot be
    opened now is said, not fatal: the move is done."""
    from tasks.warehouse import open_db

    home = store.read(clinic)
    if home is None or not Path(db_path).exists():
        return
    try:
        with open_db(db_path, wait_seconds=30) as con:
            identity = read_identity(con)
            marked = note_superseded(con, clinic, identity, home)
    except (duckdb.Error, UserFacingError, OSError) as exc:
        echo(
            f"warning: the copy of {clinic} left at {db_path} could not be marked as an old one "
            f"({type(exc).__name__}); running this move again marks it."
        )
        return
    if marked is not None and marked is not identity:
        echo(
            f"the copy left at {db_path} (generation {marked.generation}) is marked as an old "
            f"one: it plans and sends nothing, whatever the server's record says later."
        )


def old_copy_claimed(clinic: str, identity: Identity) -> UserFacingError:
    """``relay clinic claim`` of a copy marked old (note_superseded), without --old-copy: it
    would make the clinic's home a copy whose ledger lacks what the newer generation sent, and
    send it again. Said before anything is written."""
    return UserFacingError(
        f"{clinic}: nothing claimed: this database is an old copy (generation "
        f"{identity.generation}): generation {identity.superseded_by} went live on "
        f"'{identity.superseded_on}' after it, and what was sent from there is not in this "
        f"copy's ledger, so it would be sent again. Claim the clinic on "
        f"'{identity.superseded_on}' (`relay clinic home {clinic}` there says whether its copy "
        "is an old one too). Only if that copy is lost for good, run this again with "
        "--old-copy."
    )
