"""A process tree: found by walking /proc, stopped as one (SIGTERM to all at once, SIGKILL to
those left after ``STOP_GRACE``), and supervised (``supervise_command``: a command in a session
of its own, stopped as one on any stop signal, and unable to outlive its supervisor).
``relay serve`` (relay/serve.py), the tests and the benchmarks use it. Linux: /proc, prctl.
Each process is known by pid and start time, so a reused pid is never signalled or waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def _die_with_parent() -> None:
    """In the server's process: stop when the process that started it dies, even by kill -9,
    so no server is left running behind a crashed `relay serve`, test or benchmark (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


STOP_GRACE = 3.0


class Stop(BaseException):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) taken by ``relay serve``: stop the tree."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# Every way a person or a machine says "stop": Ctrl-C (SIGINT); systemd, kill, a container's
# stop (SIGTERM); the terminal closed or the SSH connection dropped (SIGHUP).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signum)


def hup_ignored() -> bool:
    """Whether this process was started to outlive its terminal (`nohup`: SIGHUP ignored)."""
    return signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def _take_stop_signals(handler) -> list[int]:
    """Install ``handler`` for the stop signals; returns those installed. SIGINT always, even
    when started with it ignored, as a shell without job control starts a background command
    (`relay serve &` in a script; CI's own runner): an operator's `kill -INT` must work.
    SIGHUP not when ignored on purpose (`nohup relay serve`: it is to outlive the terminal)."""
    taken = []
    for signum in STOP_SIGNALS:
        if signum == signal.SIGHUP and hup_ignored():
            continue
        signal.signal(signum, handler)
        taken.append(signum)
    return taken


def supervise_command(command: list[str], echo, log: Path) -> int:
    """``supervise`` for any command (tests stop a tree of their own making the same way).

    This process becomes the *subreaper* of everything below it (Linux): a process whose parent
    dies (a run the Runner started while it was shutting down, a run whose template exited) is
    re-parented here, not to init, so it is still in the tree ``stop_tree`` walks and stops.
    Every stop signal (``STOP_SIGNALS``) stops the tree the same way, and the command cannot
    outlive this process: it gets SIGTERM when this one dies, even by SIGKILL (Linux)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    _become_subreaper()
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    taken = _take_stop_signals(_raise_stop)
    with log.open("w") as err:
        proc = subprocess.Popen(
            command, stderr=err, start_new_session=True, preexec_fn=_die_with(os.getpid())
        )
        try:
            code = proc.wait()
        except Stop as stop:
            for signum in taken:  # a second Ctrl-C (or SIGTERM) changes nothing
                signal.signal(signum, signal.SIG_IGN)
            started = time.monotonic()
            killed = stop_tree(proc, root=os.getpid())
            if killed:  # which, for whoever reads the log
                err.write(f"relay serve: killed after {STOP_GRACE:g} s: {'; '.join(killed)}\n")
            err.write(f"relay serve: stopped on {signal.Signals(stop.signum).name}\n")
            after = f"; {len(killed)} killed after {STOP_GRACE:g} s" if killed else ""
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                took = time.monotonic() - started
                echo(f"Stopped: server, sandbox and runs ({took:.1f} s{after}).")
            return 0
    for signum in taken:  # it ended by itself: this process's signals as they were
        signal.signal(signum, before[signum])
    if code:
        with contextlib.suppress(OSError):
            echo(f"relay serve stopped with an error; see {log}")
    return code


def _die_with(parent: int):
    """``preexec_fn``: the child gets SIGTERM when ``parent`` dies (PR_SET_PDEATHSIG), and if
    ``parent`` died already, before that was set, it does not start at all."""

    def set_up() -> None:
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(1)

    return set_up


def _become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc), found by walking parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int, since: int | None = None) -> bool:
    """Whether ``pid`` is running (a zombie, dead but not yet reaped, is not); with ``since``
    (its ``started``), whether that same process is, not a later one given the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and (since is None or int(fields[19]) == since)


def started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the pid, names one process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def stop_tree(
    proc: subprocess.Popen | None, grace: float = STOP_GRACE, root: int | None = None
) -> list[str]:
    """SIGTERM to ``proc`` and every process below ``root`` (default: ``proc``) at once; SIGKILL
    to those left after ``grace`` seconds. Returns when all are gone, with the command lines
    of those that needed the SIGKILL. Each process is known by
    its pid and start time, so a pid the system gives to a new process meanwhile is neither
    signalled nor waited for. ``proc`` None: the tree below ``root`` (the serving process
    stopping its own)."""
    if proc is None and root is None:
        raise ValueError("stop_tree needs a process or a root")
    top = proc.pid if root is None and proc is not None else root
    assert top is not None
    tree: dict[int, int | None] = {}

    def look() -> None:
        for pid in descendants(top) | ({proc.pid} if proc is not None else set()):
            if pid not in tree and (since := started(pid)) is not None:
                tree[pid] = since
                signal_one(pid, since, signal.SIGTERM)

    def living() -> list[int]:
        return [pid for pid, since in tree.items() if alive(pid, since)]

    look()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap our own child
        if root is not None or (proc is not None and proc.returncode is None):
            look()  # started since (a run the Runner was starting), or re-parented to root
        if not living():
            break
        time.sleep(0.1)
    look()
    left = living()
    names = [_command(pid) for pid in left]
    for pid in left:
        signal_one(pid, tree[pid], signal.SIGKILL)
    if proc is not None:
        proc.wait()
    while living():  # orphans are reaped by init, or by root, a subreaper
        if root == os.getpid():
            _reap(tree)
        time.sleep(0.05)
    if root == os.getpid():
        _reap(tree)
    return names


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode()
    return str(pid)


def signal_one(pid: int, since: int | None, sig: int) -> None:
    if alive(pid, since):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(tree: dict[int, int | None]) -> None:
    """Collect the exit of processes re-parented to this one (a subreaper)."""
    for pid in tree:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
