"""One change of a clinic's home at a time, across the fleet, and the one that loses told.

A claim, a move and a restore each read the clinic's home record (a Prefect Variable,
tasks/home.py) and then write it. Creating the record is atomic on the server (a first claim: one
machine wins), replacing it is not: two ``relay clinic claim --fresh`` at once on two machines both
read generation n, both named their own database generation n + 1 and both wrote the record; the
last write stood, and both said "south lives on '<me>'", exit 0, and put the clinic's deployments
on their own queue. A restore or a move writing beside a claim did the same (two databases of
generation n + 1 live at once; a move's next step putting the home back where the claim took it
from).

So each compares and writes under the clinic's **claim lock**: a Prefect global concurrency limit
of one slot named like the record (``relay_home_<clinic>``), made on first use, held under a lease
its process renews (one killed while holding it gives it back when the lease runs out,
``CLAIM_LEASE``, once the server's repossessor sees it: 65 s after a kill here). Machines share no
disk, so no file lock could do it. Under the lock a claim reads the home again: if another machine
claimed the clinic (or a move ended) since the claim first read it, the claim fails naming that
machine, having written nothing, not even a database file. A move's steps each write under it only
if the home is still what the move last read or wrote (:func:`unchanged`), and a restore (the last
step, tasks/homerestore.py) reads, restores and writes under it, whole. Without a shared Prefect
server (each run its own temporary one) nothing is shared, and no lock is taken. No personal data.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from uuid import UUID

from tasks.errors import UserFacingError
from tasks.home import Home, HomeStore, shared_server, variable_name

CLAIM_LEASE = 60.0  # seconds the claim lock is leased for at a time (renewed while held)
CLAIM_WAIT = 120.0  # seconds a claim waits for another claim of the clinic to end


@contextlib.contextmanager
def claim_lock(clinic: str, *, wait: float = CLAIM_WAIT) -> Iterator[None]:
    """Hold the clinic's claim lock (see the module's docstring); a UserFacingError after
    ``wait`` seconds if another claim, move or restore still holds it. Through the client's
    lease calls, not ``prefect.concurrency.sync.concurrency``: that one also emits events, and
    the events worker draining them at exit printed "Still processing items" under the claim's
    last line."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    if not shared_server():  # nothing shared: no other machine to keep out
        yield
        return
    name = variable_name(clinic)
    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        lease = _acquire(client, name, wait)
        if lease is None:
            raise UserFacingError(
                f"a claim, move or restore of {clinic} has held its claim lock (the Prefect global "
                f"concurrency limit '{name}') for {wait:.0f} s: nothing was changed here. Run "
                f"`relay clinic home {clinic}` to see where it lives now, then try again if "
                f"this should still happen. One whose process was killed lets go when its "
                f"{CLAIM_LEASE:.0f}-second lease runs out (never, on a Prefect server that keeps "
                f"leases in memory and was restarted since: `prefect gcl update {name} "
                "--active-slots 0`)."
            )
        stop = threading.Event()
        renew = threading.Thread(target=_renew, args=(lease, stop), daemon=True)
        renew.start()
        try:
            yield
        finally:
            stop.set()
            renew.join()
            with contextlib.suppress(Exception):  # else its lease runs out: CLAIM_LEASE s
                client.release_concurrency_slots_with_lease(lease)


def _acquire(client, name: str, wait: float) -> UUID | None:
    """The lease of the limit's one slot, asked for every second up to ``wait`` s (None: the
    slot stayed taken)."""
    import httpx

    deadline = time.monotonic() + wait
    while True:
        try:
            got = client.increment_concurrency_slots_with_lease(
                [name], 1, "concurrency", CLAIM_LEASE
            ).json()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: the slot is taken
                raise
        else:
            if not got.get("limits"):  # made above, so disabled (or deleted) since
                raise UserFacingError(
                    f"the claim lock '{name}' (a Prefect global concurrency limit) is not "
                    f"active: enable it (`prefect gcl update {name} --enable`) and claim again."
                )
            return UUID(got["lease_id"])
        if time.monotonic() >= deadline:
            return None
        time.sleep(1.0)


def _renew(lease: UUID, stop: threading.Event) -> None:
    """Keep the lease while the holder runs (a wait for a tick to let go of the database, a
    restore's copy, say);
    a renewal that fails is tried again at the next turn, well within the lease."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(CLAIM_LEASE / 4):
            with contextlib.suppress(Exception):
                client.renew_concurrency_lease(lease, CLAIM_LEASE)


def claimed_since(read: Home | None, now: Home | None) -> bool:
    """Whether the clinic changed hands between the claim's first read (``read``) and its read
    under the lock (``now``): another machine, generation or lineage. A database bound to a home
    that had none, or a move's progress on the same home, is not a change of hands; a record
    deleted meanwhile is not either (the claim then creates it, atomically)."""
    if now is None:
        return False
    if read is None:
        return True
    return (now.machine, now.generation) != (read.machine, read.generation) or (
        read.database is not None and now.database != read.database
    )


def lost(clinic: str, won: Home, machine: str, *, fresh: bool) -> UserFacingError:
    """The error of a claim that lost to ``won``, claimed on another machine while it ran."""
    return UserFacingError(
        f"{clinic} was claimed by (or moved to) '{won.machine}' first (generation "
        f"{won.generation}), while "
        f"this claim ran: it lives there, and this machine's database is not the clinic's (this "
        f"claim did not name it). To make this machine its home after all, move it here with "
        f"`relay clinic move {clinic} --to {machine}` on '{won.machine}'"
        + (
            f", or start over here on purpose with `relay clinic claim {clinic} --fresh` again "
            f"(the database on '{won.machine}' is then refused)."
            if fresh
            else "."
        )
    )


@contextlib.contextmanager
def unchanged(store: HomeStore, clinic: str, read: Home, *, again: str) -> Iterator[None]:
    """Hold the claim lock while a step of a move writes the home (and does what goes with the
    write: pausing, moving or resuming the clinic's deployments, starting the restore), only if
    the home is still ``read``, what the move last read or wrote; else a UserFacingError naming
    where it is now and when to run ``again``, with nothing of the step done."""
    with claim_lock(clinic):
        now = store.read(clinic)
        if now != read:
            where = f"it is at home on {now.describe()}" if now else "its home record is gone"
            raise UserFacingError(
                f"{clinic}'s home changed while this move ran (a claim, move or restore on "
                f"another machine, or in another shell, came first): {where}. The move stopped "
                "there, before its next step: the home and the clinic's deployments are as that "
                f"one left them. `relay clinic home {clinic}` shows the home; if the clinic "
                f"should still move, run `{again}`" + (f" on '{now.machine}'." if now else ".")
            )
        yield
