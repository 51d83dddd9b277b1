"""The sync's progress artifact is for watching: a Prefect server that refuses an update (its
client's retries spent) neither fails the sync nor is asked again on every page."""

from __future__ import annotations

from types import SimpleNamespace


def test_a_refused_progress_update_does_not_fail_the_sync_and_is_not_retried(monkeypatch):
    from flows import sync as sync_flow

    asked = []

    def refuse(artifact_id, progress):
        asked.append(progress)
        raise RuntimeError("503 Service Unavailable")

    monkeypatch.setattr(sync_flow, "update_progress_artifact", refuse)
    progress = sync_flow.SyncProgress(SimpleNamespace(counts={}))
    progress.artifact, progress.expected = "artifact-id", 10_000

    progress.page(SimpleNamespace(resource="patients"))  # refused: no exception
    progress._last = 0.0  # the next update is due
    progress.page(SimpleNamespace(resource="patients"))
    progress.finish(completed=True)

    assert asked == [0.0] and progress.artifact is None
