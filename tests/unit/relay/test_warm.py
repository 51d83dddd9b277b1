"""relay/warm.py without a server: where no fork exists, nothing is patched and a warning says
that runs start Prefect's way; the template's first process proves the imports were done."""

from __future__ import annotations

import multiprocessing

import pytest


def test_without_fork_runs_start_prefects_way_with_a_warning(monkeypatch):
    import prefect.runner._starter_engine as engine

    from relay import warm

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(warm, "_warned", set())
    before = engine.run_process
    with pytest.warns(RuntimeWarning, match="no fork"):
        assert warm.install() is False
    assert engine.run_process == before


def test_the_template_imports_only_and_forks_fresh_processes(tmp_path):
    from relay import warm

    assert warm.start_template()
    out = tmp_path / "child.txt"
    process = warm._context().Process(target=_report, args=(str(out),))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0
    preloaded, threads = out.read_text().split("|")
    assert preloaded == "True"  # imported by the template, not by this process
    assert threads == "MainThread"  # no thread of the template's (or ours) in the run


def _report(path: str) -> None:
    import sys
    import threading

    with open(path, "w") as out:
        out.write(f"{'prefect.engine' in sys.modules}|")
        out.write(",".join(t.name for t in threading.enumerate()))


def test_a_run_started_from_the_template_warns_nothing_about_its_preloaded_engine(
    tmp_path, monkeypatch
):
    """runpy warns when the module it runs was imported already (the template's whole point);
    the worker's output had that warning once per run."""
    import sys
    import warnings

    from relay import warm

    package = tmp_path / "preloaded_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import engine\n")
    (package / "engine.py").write_text("RAN = __name__\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import preloaded_pkg  # noqa: F401  the template's import

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warm._run_main("preloaded_pkg.engine")
    finally:
        for name in ("preloaded_pkg", "preloaded_pkg.engine"):
            sys.modules.pop(name, None)


class _Run:
    """A run's process as run_process_in_template has it: a sentinel that becomes readable
    when it ends (here a pipe, ended by ``end``)."""

    def __init__(self) -> None:
        import os

        self.sentinel, self._w = os.pipe()

    def end(self) -> None:
        import os

        os.write(self._w, b"0")


def test_a_stopping_worker_tells_a_run_in_its_lane_and_waits_for_it_shielded(tmp_path):
    """Cancelled (its worker stopping), the wait for a run in its fast lane goes on: the stop
    file is made and the run's end awaited, not cut short by the worker's shutdown."""
    import multiprocessing.connection
    import threading

    import anyio

    from flows.lane import WORKER_STOP
    from relay import warm

    stop = tmp_path / "run-1"
    (tmp_path / "run-1.lane").touch()  # the lane started (flows/lane.py Watch)
    run = _Run()

    def the_lane() -> None:  # stops at its next look, a moment after the stop file appears
        while not stop.exists():
            threading.Event().wait(0.01)
        threading.Event().wait(0.5)
        run.end()

    async def stopping() -> bool:
        ended = False
        threading.Thread(target=the_lane, daemon=True).start()
        with anyio.CancelScope() as scope:
            scope.cancel()  # the worker's shutdown
            await warm._let_its_lane_end(run, {WORKER_STOP: str(stop)})
            ended = bool(multiprocessing.connection.wait([run.sentinel], 0))
        return ended

    assert anyio.run(stopping)  # told, and its end awaited before the run is stopped


def test_a_run_not_in_its_lane_is_not_told_nor_waited_for(tmp_path):
    """Mid-step (no lane marker) or not a worker's warm run (no stop file named): stopped at
    once, as before."""
    import anyio

    from flows.lane import WORKER_STOP
    from relay import warm

    stop = tmp_path / "run-2"
    for env in ({WORKER_STOP: str(stop)}, {}):
        anyio.run(warm._let_its_lane_end, _Run(), env)  # would wait 20 s if it waited
    assert not stop.exists()
