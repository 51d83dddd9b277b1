"""flows.settle on a real Prefect server (SQLite, as `make serve` runs it): after a flow of many
tasks it returns only once the server has recorded every task run as final, so the tick's next
write does not meet "database is locked" and Prefect's 2-second retry."""

from __future__ import annotations

from uuid import UUID

import pytest

pytestmark = pytest.mark.prefect


def test_settle_returns_once_the_server_has_recorded_every_task_run(prefect_server):
    from prefect import flow, task
    from prefect.cache_policies import NONE
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.settle import settle

    @task(cache_policy=NONE)
    def one(i: int) -> int:
        return i

    @flow
    def many(n: int) -> UUID | None:
        for i in range(n):
            state = one(i, return_state=True)
        return state.state_details.task_run_id

    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        state = many(40, return_state=True)
        run, last = state.state_details.flow_run_id, state.result()
        settle(last, run, timeout=30)
        with get_client(sync_client=True) as client:
            recorded = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run]))
            )
    assert len(recorded) == 40
    assert {r.state_type.value for r in recorded} == {"COMPLETED"}


def test_settle_outside_a_flow_run_or_without_a_task_run_does_not_wait():
    from uuid import uuid4

    from flows.settle import settle

    assert settle(uuid4()) == 0.0
    assert settle(None, uuid4()) == 0.0
