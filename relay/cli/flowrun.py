"""Running a Prefect flow from the terminal so that a problem a person must fix ends in one clear
line (``main`` prints it), not in Prefect's traceback and log chatter.

``prepare()`` is called by a command after it imports its flow (so Prefect's logging is set up):
it checks that the server PREFECT_API_URL names answers (else: what to start), and keeps a
``UserFacingError`` raised inside a flow or one of its tasks out of the console (the run's own
log in the UI still has it). ``silence()`` is called by ``main`` when it prints such an error:
what Prefect says while it shuts down after that (its events worker draining) adds nothing for
the person reading.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import types

from tasks.errors import UserFacingError


class PrefectUnreachable(UserFacingError):
    """PREFECT_API_URL names a server that does not answer."""


# A task run that failed says so once more, as a state with no exception attached: the name of
# the exception's class is all the record holds.
_TASK_FAILED = re.compile(r"Finished in state Failed\(.Task run encountered an exception (\w+): ")


def _user_facing_names() -> set[str]:
    names, todo = set(), [UserFacingError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


class _ConsoleFilter(logging.Filter):
    silenced = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.silenced or getattr(record, "relay_said_in_the_error", False):
            return False  # the error main prints says it (tasks.errors.SAID_IN_THE_ERROR)
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UserFacingError):
            return False
        failed = _TASK_FAILED.match(record.getMessage())
        return failed is None or failed.group(1) not in _user_facing_names()


_FILTER = _ConsoleFilter()


def _console_handlers() -> list[logging.Handler]:
    if "prefect" not in sys.modules:
        return []
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *map(logging.getLogger, ("prefect", "prefect.flow_runs"))]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)]


def unreachable(exc: BaseException) -> str | None:
    """The one line for a command that found the Prefect server PREFECT_API_URL names gone
    (refused, or no answer to connect): `relay clinic`, `relay deploy`, `relay alerts` and the
    like talk to it directly, without ``prepare``. None for any other error."""
    import httpx

    from tasks.home import api_url

    url = api_url()
    if not url or not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return None
    try:
        target = str(exc.request.url)
    except RuntimeError:  # no request attached: not a call we can name
        return None
    if not target.startswith(url.rstrip("/")):
        return None  # another service (a provider, Cliniko): its own errors say so
    return (
        f"No Prefect server answers at {url} (PREFECT_API_URL: {type(exc).__name__}). Start it "
        "(`relay prefect-server`, or `relay serve`), or set PREFECT_API_URL to the server "
        "every machine uses."
    )


def need_api_url(purpose: str) -> str:
    """The Prefect server's API (tasks.home.api_url: the environment's, else Prefect's
    profile's), or the one line a command that needs a server prints without one; ``purpose``
    says why it needs one ("deployments live on the server")."""
    import typer

    from tasks.home import api_url

    if url := api_url():
        return url
    raise typer.BadParameter(
        f"set PREFECT_API_URL to your Prefect server (e.g. http://127.0.0.1:4200/api); {purpose}"
    )


def prepare() -> None:
    """Before running a flow from the terminal: the server must answer, and errors meant for a
    person are printed once by ``main``, not logged with a traceback on the console too.
    Without a server, the temporary one Prefect starts for the run dies with this process."""
    from tasks.home import api_url

    url = api_url()
    if not url:
        tie_temporary_server()
    if url:
        import httpx

        try:
            httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise PrefectUnreachable(
                f"No Prefect server answers at {url} (PREFECT_API_URL: {type(exc).__name__}). "
                "Start it (`relay serve`, or `relay prefect-server`), or unset PREFECT_API_URL "
                "to run this once without a server."
            ) from None
    for handler in _console_handlers():
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


class _TiedSubprocess(types.ModuleType):
    """``subprocess`` as Prefect's temporary server module sees it: a process it starts from the
    main thread gets SIGTERM when this process dies (PR_SET_PDEATHSIG; relay/tree.py). Only from
    the main thread: the signal follows the thread that started the child, and another thread
    (Prefect's events worker, say) may end before the process does. In a session of its own:
    the terminal's Ctrl-C (SIGINT to its foreground group) is the command's to stop on, and it
    killed the server at once under a command that then retried it for minutes (`make demo`)."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802 - subprocess's own name
        from relay.tree import _die_with

        if threading.current_thread() is threading.main_thread():
            kwargs.setdefault("preexec_fn", _die_with(os.getpid()))
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)


def tie_temporary_server() -> None:
    """A command killed with SIGKILL (or out of memory) never ran Prefect's exit handler that
    stops its temporary server, so the server ran on, for good. Tied, it stops with the
    command."""
    from prefect.server.api import server

    if not isinstance(server.subprocess, _TiedSubprocess):
        server.subprocess = _TiedSubprocess("subprocess")  # type: ignore[assignment]


def silence() -> None:
    """Nothing more from Prefect on the console: the error has been said."""
    _FILTER.silenced = True
    for handler in _console_handlers():
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
