"""The lock beside a clinic's DuckDB file (``<db>.lock``), and what waits on it.

DuckDB lets one process open a file for writing, and no other process open it at all meanwhile,
even read-only. So every open takes this advisory lock first (tasks/warehouse.py ``open_db``):
writers exclusively, readers shared. A writer notes what it is in the lock file (a tick, its
fast lane, another run), so an open that waits in vain can say what it waited for. A reader that
finds the lock taken asks the holder to step aside, with a marker in ``<db>.readers`` that its
process locks while it waits and reads (``readers_waiting``; the fast lane looks between polls).
A hold also keeps ``<db>.hold`` locked, so ``in_use`` sees a tick that has stepped aside.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from tasks.errors import UserFacingError


class DatabaseBusy(UserFacingError):
    """Another process holds the clinic's database for writing."""


# What holds a database, written into its lock file by the process holding it exclusively (and
# cleared when it lets go), so an open that waits in vain can say who it waited for.
TICK = "a tick"
FAST_LANE = "a tick's fast lane"
OTHER = "another run"
# How long a hold that steps aside for readers (the fast lane) waits for them to finish before
# taking the database back: a reader reading longer waits no longer for the lane to step aside
# again, and the lane waits on the lock itself, until its next tick is due at the latest.
READERS_CAP = 60.0
# An open that may wait this long says, when it starts waiting, what it waits for: a `relay sync`
# behind a tick's fast lane waited up to ten minutes saying nothing.
SAY_WAITING_AFTER = 10.0

log = logging.getLogger(__name__)


def sidecar(db_path: Path, suffix: str) -> Path:
    return db_path.with_name(db_path.name + suffix)


def acquire(
    db_path: Path,
    exclusive: bool,
    wait_seconds: float,
    *,
    holder: str = OTHER,
    on_wait: Callable[[], None] | None = None,
) -> int:
    """The lock file's descriptor, locked (exclusively for a writer, shared for a reader), or
    DatabaseBusy after ``wait_seconds``. ``on_wait`` runs once, when the lock is first found
    taken. A writer notes ``holder`` (and its pid) in the lock file for those who wait."""
    fd = os.open(sidecar(db_path, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    deadline, said = time.monotonic() + wait_seconds, False
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                if not said and wait_seconds >= SAY_WAITING_AFTER:
                    said = True
                    log.warning(
                        "%s is in use by %s: waiting up to %.0fs for it",
                        db_path.name,
                        _holder(fd) or "another run or a reader",
                        wait_seconds,
                    )
                if time.monotonic() >= deadline:
                    raise DatabaseBusy(_busy(db_path, fd, exclusive, wait_seconds)) from None
                time.sleep(0.2)
        if exclusive:
            note(fd, holder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int, exclusive: bool) -> None:
    try:
        if exclusive:
            os.ftruncate(fd, 0)  # nobody holds it now: no note left for a later wait to read
    except OSError:
        pass
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def note(fd: int, holder: str) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}".encode(), 0)
    except OSError:  # a note is a courtesy: the lock is what counts
        pass


def _holder(fd: int) -> str:
    """What the lock file says holds the database, if its writer is alive ('' otherwise: a
    reader holds it, or a writer older than the note, or one killed before clearing it)."""
    try:
        pid, _, holder = os.pread(fd, 200, 0).decode("utf-8", "replace").partition(" ")
        if pid.isdigit() and holder:
            os.kill(int(pid), 0)
            return f"{holder} (pid {pid})"
    except ProcessLookupError:
        pass
    except (OSError, ValueError):
        pass
    return ""


def _busy(db_path: Path, fd: int, exclusive: bool, waited: float) -> str:
    """What an open that waited in vain is told: what holds the database, how long it waited,
    and what to do."""
    holder = _holder(fd)
    said = f"{db_path} is in use by {holder or 'another run or a reader'} (waited {waited:.0f}s)"
    if holder.startswith(FAST_LANE):
        if exclusive:
            return (
                f"{said}. The lane keeps it until the clinic's next tick is due (at most a tick "
                "interval): try again after that tick, or pause the tick's deployment."
            )
        return (
            f"{said}. The lane lets readers in between its polls; it did not in time (a "
            "booking it was catching up on takes longer): try again, or wait longer."
        )
    if holder.startswith(TICK):
        return (
            f"{said}, running its steps. Try again when they are done (usually a minute or "
            "two), or wait longer."
        )
    return (
        f"{said}: a sync, a send or another command for this clinic. Try again when it is "
        "done, or stop it."
    )


@contextlib.contextmanager
def file_lock(
    db_path: Path, exclusive: bool, wait_seconds: float, *, asks: bool = False
) -> Iterator[None]:
    """The lock for one open. ``asks``: a read that finds the database held asks the holder to
    step aside (a marker in ``<db>.readers``, while it waits and reads; ``readers_waiting``)."""
    asking: list[tuple[int, Path]] = []
    try:
        fd = acquire(
            db_path,
            exclusive,
            wait_seconds,
            on_wait=(lambda: asking.append(ask(db_path))) if asks else None,
        )
        try:
            yield
        finally:
            release(fd, exclusive)
    finally:
        for marker_fd, marker in asking:  # after the read's connection closed
            with contextlib.suppress(OSError):
                marker.unlink()
            os.close(marker_fd)


def ask(db_path: Path) -> tuple[int, Path]:
    """A marker saying a reader waits for the database: ``<db>.readers/<pid>-<uuid>``, locked
    by this process for as long as it exists (a dead reader's lock is gone with it, so its
    marker is known to be stale). Made under a hidden name, locked, then renamed: a marker
    seen by its name is always locked while its reader lives."""
    folder = sidecar(db_path, ".readers")
    folder.mkdir(exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex}"
    fresh = folder / f".{name}"
    fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(fresh, folder / name)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            fresh.unlink()
        raise
    return fd, folder / name


def readers_waiting(db_path: str | Path) -> bool:
    """Whether a live reader asks for the database (a marker of ``_ask`` whose process still
    locks it). A stale marker (its reader gone) is removed, not counted. Without readers: one
    failed look at a folder."""
    try:
        entries = os.scandir(sidecar(Path(db_path), ".readers"))
    except (FileNotFoundError, NotADirectoryError):
        return False
    with entries:
        markers = [e.path for e in entries if not e.name.startswith(".")]
    return any(_live(marker) for marker in markers)


def _live(marker: str) -> bool:
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:  # gone already (its reader is done), or not ours to read: not waited for
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # its reader holds it: alive and waiting or reading
    else:
        with contextlib.suppress(OSError):
            os.unlink(marker)  # its reader is gone: a stale marker
        return False
    finally:
        os.close(fd)


def in_use(db_path: str | Path) -> bool:
    """Whether a process holds the clinic's database now (a tick holds it from its first step to
    its summary, and through its fast lane, even while the lane has stepped aside for readers):
    asks the locks without waiting and opens nothing."""
    path = Path(db_path)
    if not path.parent.exists():
        return False
    presence = sidecar(path, ".hold")
    if presence.exists():
        try:
            fd = os.open(presence, os.O_RDONLY)
        except OSError:
            pass
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a hold keeps it shared
            except BlockingIOError:
                return True
            finally:
                os.close(fd)
    try:
        with file_lock(path, exclusive=False, wait_seconds=0):
            return False
    except DatabaseBusy:
        return True
