"""A clinic's home: the one machine whose DuckDB file is the clinic's state, enforced by the tick.

Each machine has a name (``RELAY_MACHINE``, default the host name) and a Prefect work queue,
``machine-<name>``, in the clinic's work pool; a clinic's tick deployment sits on its home's
queue, so only that machine's worker picks its ticks up. The code does not trust the routing:

- **The home record** is a Prefect Variable every worker reads, ``relay_home_<clinic>``:
  ``{"machine", "generation", "moved_at", "database"}`` (plus ``moving_to`` and ``backup``
  while ``relay clinic move`` is under way). The first tick of a clinic with no record claims it
  for its machine, generation 1, naming its database first (creating a variable is atomic on
  the server: two machines cannot both win; the loser's database is unnamed again). A home
  claimed before any tick (``claim_home``) has no ``database``: the first tick there binds one.
- **The database's identity** is one row of ``state.clinic_identity`` (tasks/schema/80_home.sql):
  the clinic, its lineage (``database_id``, carried by every backup) and its generation.

:func:`guard` runs first in every tick and refuses (:class:`HomeRefused`) a tick off the home,
during a move, against a database of another generation or lineage, or against a fresh one while
the home has history (it would send again what the home's ledger sent). Without a Prefect server
(a temporary one per run) nothing is shared: the guard only names the database. No personal data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import duckdb

from tasks.errors import UserFacingError
from tasks.paths import data_dir
from tasks.warehouse import in_use, open_db, transaction

VARIABLE_PREFIX = "relay_home_"
QUEUE_PREFIX = "machine-"


def this_machine() -> str:
    """This machine's name: ``RELAY_MACHINE``, or the host name. One that makes no work queue
    (blank, padded, a character Prefect refuses) is refused here, where every claim, tick and
    worker asks it: a claim recorded such a name as the home, whose worker could serve no
    queue."""
    from tasks.homequeue import machine_problem

    name = os.environ.get("RELAY_MACHINE") or socket.gethostname()
    if problem := machine_problem(name):
        raise UserFacingError(
            f"This machine's name: {problem}. Nothing was claimed, run or served."
        )
    return name


def queue_for(machine: str) -> str:
    """The work queue of a machine's worker: ``machine-<name>``."""
    return f"{QUEUE_PREFIX}{machine}"


def variable_name(clinic: str) -> str:
    """The Prefect Variable holding the clinic's home: lower case, other than [a-z0-9_] -> _."""
    return VARIABLE_PREFIX + re.sub(r"[^a-z0-9_]", "_", clinic.lower())


def backup_dir() -> Path:
    """Where moves put databases: ``RELAY_BACKUP_DIR`` (a share both read), else <data>/backups."""
    return Path(os.environ.get("RELAY_BACKUP_DIR") or data_dir() / "backups")


@dataclass(frozen=True)
class Home:
    """Where the clinic's state lives, as the Prefect server records it."""

    machine: str
    generation: int
    moved_at: str | None = None
    database: str | None = None  # the lineage (state.clinic_identity.database_id)
    moving_to: str | None = None  # a move under way: nothing runs until it is restored there
    backup: str | None = None  # the move's copy, relative to the backup directory
    backup_sha256: str | None = None
    paused: list[str] | None = None  # deployments the move paused, resumed when it ends

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        """One line for an operator: where, which generation, since when, a move under way."""
        text = f"machine '{self.machine}', generation {self.generation}"
        if self.database:
            text += f", database {self.database}"
        if self.moved_at:
            text += f", since {self.moved_at}"
        if self.moving_to:
            text += (
                f"; MOVING to '{self.moving_to}': nothing runs until `relay clinic restore` there"
            )
        if self.paused:
            text += f" (paused: {', '.join(self.paused)})"
        return text

    @classmethod
    def from_json(cls, value) -> Home:
        data = json.loads(value) if isinstance(value, str) else dict(value)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Identity:
    """What the database says it is (state.clinic_identity)."""

    clinic: str
    database_id: str
    generation: int
    machine: str
    # the newer generation this copy saw recorded, and where (note_superseded): an old copy
    superseded_by: int | None = None
    superseded_on: str | None = None

    def describe(self) -> str:
        return (
            f"clinic '{self.clinic}', database {self.database_id}, generation {self.generation}, "
            f"written on '{self.machine}'"
            + (
                f"; an old copy: generation {self.superseded_by} went live on "
                f"'{self.superseded_on}'"
                if self.superseded_by
                else ""
            )
        )


class HomeRefused(UserFacingError):
    """This run must not plan or send for the clinic here; says why and what to do."""


# --- the record on the Prefect server -------------------------------------------------------


class HomeStore(Protocol):
    def read(self, clinic: str) -> Home | None: ...
    def create(self, clinic: str, home: Home) -> Home: ...  # the existing one if any
    def write(self, clinic: str, home: Home) -> None: ...


class PrefectHomes:
    """Home records as Prefect Variables on the configured server."""

    def _client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def read(self, clinic: str) -> Home | None:
        with self._client() as client:
            found = client.read_variable_by_name(variable_name(clinic))
        return Home.from_json(found.value) if found is not None else None

    def create(self, clinic: str, home: Home) -> Home:
        from prefect.client.schemas.actions import VariableCreate
        from prefect.exceptions import ObjectAlreadyExists

        with self._client() as client:
            try:
                client.create_variable(
                    VariableCreate(name=variable_name(clinic), value=home.to_json())
                )
            except ObjectAlreadyExists:  # another machine claimed it first: theirs stands
                return self.read(clinic) or home
        return home

    def write(self, clinic: str, home: Home) -> None:
        from prefect.client.schemas.actions import VariableCreate, VariableUpdate

        with self._client() as client:
            if client.read_variable_by_name(variable_name(clinic)) is None:
                client.create_variable(
                    VariableCreate(name=variable_name(clinic), value=home.to_json())
                )
            else:
                client.update_variable(
                    VariableUpdate(name=variable_name(clinic), value=home.to_json())
                )

    def forget(self, clinic: str) -> None:
        with self._client() as client:
            if client.read_variable_by_name(variable_name(clinic)) is not None:
                client.delete_variable_by_name(variable_name(clinic))


def api_url() -> str | None:
    """The Prefect server's API as Prefect itself reads it: PREFECT_API_URL from the environment
    or from Prefect's profile (`prefect config set PREFECT_API_URL=...`); None without one. The
    environment is read as it is now: Prefect reads it once, when its settings are first built,
    and a process may point itself at a server after that (relay/serve.py use_server)."""
    from prefect.settings import get_current_settings

    return os.environ.get("PREFECT_API_URL") or get_current_settings().api.url or None


def shared_server() -> bool:
    """Whether runs talk to a Prefect server other machines can share (PREFECT_API_URL set);
    without one each run starts a temporary server of its own and nothing is shared."""
    return api_url() is not None


def read_home(clinic: str) -> Home | None:
    """The clinic's home as the server records it (None: none yet)."""
    return PrefectHomes().read(clinic)


def claim_home(clinic: str, machine: str | None = None, *, database: str | None = None) -> Home:
    """Record ``machine`` (default this one) as the clinic's home, generation 1, only when the
    clinic has no home yet; returns the home that stands (someone else's if they were first)."""
    return PrefectHomes().create(
        clinic, Home(machine=machine or this_machine(), generation=1, database=database)
    )


def forget_home(clinic: str) -> None:
    """Delete the clinic's home record: for a database thrown away on purpose (the demo's)."""
    PrefectHomes().forget(clinic)


# --- the database's identity ------------------------------------------------------------------


def read_identity(con: duckdb.DuckDBPyConnection) -> Identity | None:
    # by name: a database opened read-only before its schema gained a column has none of it
    cursor = con.execute("SELECT * FROM state.clinic_identity")
    names = [d[0] for d in cursor.description]
    row = cursor.fetchone()
    if row is None:
        return None
    r = dict(zip(names, row, strict=True))
    return Identity(
        r["clinic"], r["database_id"], int(r["generation"]), r["machine"],
        r.get("superseded_by"), r.get("superseded_on"),
    )  # fmt: skip


def refuse_another_clinics(identity: Identity | None, clinic: str, nothing: str = "") -> None:
    """HomeRefused when the database is another clinic's (two clinic.yaml naming one file)."""
    if identity is not None and identity.clinic != clinic:
        raise HomeRefused(
            f"{f'{clinic}: {nothing}: ' if nothing else ''}this database holds clinic "
            f"'{identity.clinic}', not '{clinic}': check `database:` in "
            f"clinics/{clinic}/clinic.yaml."
        )


def write_identity(con: duckdb.DuckDBPyConnection, identity: Identity) -> None:
    now = datetime.now(UTC)
    with transaction(con):
        con.execute("DELETE FROM state.clinic_identity WHERE clinic <> ?", [identity.clinic])
        con.execute(
            "INSERT INTO state.clinic_identity (clinic, database_id, generation, machine, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (clinic) "
            "DO UPDATE SET database_id = excluded.database_id, generation = excluded.generation,"
            " machine = excluded.machine, updated_at = excluded.updated_at,"
            " superseded_by = NULL, superseded_on = NULL",  # a current copy again
            [identity.clinic, identity.database_id, identity.generation, identity.machine,
             now, now],
        )  # fmt: skip


def forget_identity(con: duckdb.DuckDBPyConnection, clinic: str) -> None:
    con.execute("DELETE FROM state.clinic_identity WHERE clinic = ?", [clinic])


# --- the guard ----------------------------------------------------------------------------------


def refusal(clinic: str, machine: str, identity: Identity | None, home: Home) -> str | None:
    """Why a tick of ``clinic`` on ``machine`` with this database must not plan or send (None:
    it may). Each reason says what to do."""
    if home.moving_to:
        return (
            f"{clinic} is being moved from '{home.machine}' to '{home.moving_to}' "
            f"(relay clinic move): nothing runs until its restore on '{home.moving_to}' finishes "
            f"the move (the move starts it there; or run `relay clinic restore {clinic}` there)."
        )
    if machine != home.machine:
        return (
            f"this tick ran on machine '{machine}', but {clinic}'s home is '{home.machine}' "
            f"(generation {home.generation}): its database and ledger are there. Put the "
            f"clinic's deployments on work queue '{queue_for(home.machine)}' (if they are, "
            f"the worker on '{machine}' serves that queue: give it only "
            f"'{queue_for(machine)}'), or move the clinic here with "
            f"`relay clinic move {clinic} --to {machine}`."
        )
    if identity is None:
        return (
            f"this database is new, but {clinic}'s home on '{home.machine}' has history "
            f"(generation {home.generation}): a fresh database would send again what its "
            f"ledger already sent. If another machine is also named '{machine}' (a cloned host, "
            "a copied RELAY_MACHINE), give each its own RELAY_MACHINE and stop this one's worker. "
            "Else put the clinic's database back (its last backup), or, to start over on "
            f"purpose, run `relay clinic claim {clinic} --fresh` on this machine."
        )
    if home.database and identity.database_id != home.database:
        return (
            f"this database is not {clinic}'s: it was started on its own (lineage "
            f"{identity.database_id[:8]}), not from the home's (lineage {home.database[:8]}). "
            "Put the clinic's database back (its last backup), or run "
            f"`relay clinic claim {clinic} --fresh` to make this one the clinic's on purpose."
        )
    if identity.superseded_by and identity.superseded_by > home.generation:
        return (
            f"this is an old copy of {clinic} (generation {identity.generation}): generation "
            f"{identity.superseded_by} went live on '{identity.superseded_on}' after it, yet the "
            f"Prefect server's record says generation {home.generation} on '{home.machine}': the "
            "record is older than the clinic (the server's database put back from a backup taken "
            f"before a move?). Planning or sending here would send again what "
            f"'{identity.superseded_on}' has sent. Record the current copy as the home again: on "
            f"'{identity.superseded_on}' run `relay clinic claim {clinic} --fresh` (its database "
            f"and ledger are kept), unless `relay clinic home {clinic}` there says that copy is "
            "an old one too: then on the machine it names."
        )
    if identity.generation != home.generation:
        return (
            f"this database is generation {identity.generation} of {clinic}, the home's is "
            f"generation {home.generation}"
            + (f" (moved {home.moved_at})" if home.moved_at else "")
            + ": it is not the clinic's current copy. If a move stopped half-way, run "
            f"`relay clinic restore {clinic}` again on '{home.machine}'."
        )
    return None


def refuse_elsewhere(
    clinic: str, *, machine: str | None = None, store: HomeStore | None = None
) -> None:
    """Before the tick opens the clinic's database: on a machine that is not the clinic's home,
    or during a move, raise HomeRefused here, so a misrouted tick does not even create an empty
    database file where the clinic does not live. :func:`guard` checks the rest, with the
    database open."""
    if store is None:
        if not shared_server():
            return
        store = PrefectHomes()
    home = store.read(clinic)
    machine = machine or this_machine()
    if home is not None and (home.moving_to or home.machine != machine):
        reason = refusal(clinic, machine, None, home)
        raise HomeRefused(f"{clinic}: nothing planned or sent: {reason}")


def guard(
    con: duckdb.DuckDBPyConnection,
    clinic: str,
    *,
    machine: str | None = None,
    store: HomeStore | None = None,
) -> Home | None:
    """Before a tick plans or sends: check (or claim) the clinic's home, and raise HomeRefused
    if this run is not the clinic's. Gives a database without an identity its identity when it
    becomes the clinic's (first claim; or no shared server). Returns the home (None without a
    shared server)."""
    machine = machine or this_machine()
    identity = read_identity(con)
    refuse_another_clinics(identity, clinic)
    if store is None:
        if not shared_server():
            if identity is None:
                write_identity(con, Identity(clinic, uuid.uuid4().hex, 1, machine))
            return None
        store = PrefectHomes()
    home = store.read(clinic)
    if home is None:  # the clinic's first tick anywhere: this machine becomes its home
        mine = identity or Identity(clinic, uuid.uuid4().hex, 1, machine)
        # The database named before the record naming it, as `relay clinic claim` does: a run
        # killed between the two leaves a named database that claims the home at the next
        # tick, never a home whose database is unnamed (refused as a fresh one ever after).
        if identity is None:
            write_identity(con, mine)
        wanted = Home(machine=machine, generation=mine.generation, database=mine.database_id)
        home = store.create(clinic, wanted)
        if home == wanted:
            identity = mine
        elif identity is None:  # another machine was first: this database is not the clinic's
            forget_identity(con, clinic)
    elif home.database is None and home.machine == machine and not home.moving_to:
        # claimed before any database was bound to it (`claim_home` by a deploy): the first
        # tick at home binds this one, at the home's generation
        mine = (
            replace(identity, generation=home.generation)
            if identity
            else Identity(clinic, uuid.uuid4().hex, home.generation, machine)
        )
        write_identity(con, mine)
        identity, home = mine, replace(home, database=mine.database_id)
        store.write(clinic, home)
    reason = refusal(clinic, machine, identity, home)
    if reason:
        raise HomeRefused(f"{clinic}: nothing planned or sent: {reason}")
    return home


# --- moving: back up, restore (the move's last step, restore_home: tasks/homerestore.py) ------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backup_database(db_path: Path, dest: Path, *, wait_seconds: float = 600.0) -> str:
    """Copy the clinic's database to ``dest`` whole: under its lock (a tick waits), after a
    CHECKPOINT, through a temporary name and a rename (no half file under ``dest``, ever: a folder
    it cannot make or write is a UserFacingError naming it and why). Returns the copy's sha256."""
    partial = dest.with_name(dest.name + ".partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open_db(db_path, wait_seconds=wait_seconds) as con:
            con.execute("CHECKPOINT")
            shutil.copyfile(db_path, partial)
        with partial.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, dest)
    except OSError as exc:
        if isinstance(exc, UserFacingError):  # open_db's NoDatabase: one clear line already
            raise
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        why = f"be written to {dest.parent}: {exc.strerror or exc}; nothing was left there"
        if str(exc.filename or "").startswith(str(db_path)):  # its side: a disk mounted read-only
            why = (f"open {exc.filename}: {exc.strerror or exc} (it locks and CHECKPOINTs the "
                   "database): its folder must be writable")  # fmt: skip
        raise UserFacingError(f"The backup could not {why}.") from None
    return sha256(dest)


def restore_database(
    source: Path, db_path: Path, clinic: str, *, generation: int, machine: str, checksum: str | None
) -> Identity:
    """Put the backup ``source`` at ``db_path`` as ``generation`` on ``machine``. Idempotent: a
    database already restored as that generation (a restore stopped after this step) is kept.
    A different file at ``db_path`` is kept aside (``.before-g<generation>``), never deleted."""
    db_path = Path(db_path)
    if db_path.exists():
        try:
            with open_db(db_path) as con:
                current = read_identity(con)
        except duckdb.Error:  # not a database at all: set aside below
            current = None
        if current and current.clinic == clinic and current.generation == generation:
            return current  # restored already
    if not source.exists():
        raise UserFacingError(
            f"{clinic}: the move's backup is not at {source}: mount the backup directory the "
            "other machine wrote to and set RELAY_BACKUP_DIR (or --backup-dir) to it."
        )
    if checksum and sha256(source) != checksum:
        raise UserFacingError(
            f"{clinic}: the backup at {source} is not the one the move wrote (checksum differs): "
            "is the copy complete? Run `relay clinic move` again on the old home."
        )
    if in_use(db_path):
        raise UserFacingError(f"{clinic}: {db_path} is in use by a run here; stop it first.")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for old in (db_path, db_path.with_name(db_path.name + ".wal")):
        if old.exists():
            os.replace(old, old.with_name(f"{old.name}.before-g{generation}"))
    partial = db_path.with_name(db_path.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, db_path)
    with open_db(db_path) as con:
        identity = read_identity(con)
        if identity is None or identity.clinic != clinic:
            raise UserFacingError(f"{clinic}: the backup at {source} is not this clinic's.")
        identity = replace(identity, generation=generation, machine=machine)
        write_identity(con, identity)
    return identity
