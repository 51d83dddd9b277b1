"""One deployment of ``relay deploy`` made or brought up to date on the Prefect server, changing
only what changed (docs/scaling.md, Deploying).

A new deployment is created, active. An existing one is compared with what clinic.yaml asks for
and updated the way Prefect 3 updates a deployment it applies again (``RunnerDeployment.apply``:
a PATCH, schedules matched by their slug), with only the fields and schedules that differ:

- nothing differs: nothing is written. Any update makes the server delete the deployment's
  future scheduled runs (``prefect.server.models.deployments.update_deployment``) for its
  scheduler to make them again, and an upsert (``create_deployment``, what this module did
  before) also deletes every schedule and makes it anew, with a new id, and an interval sent
  without an anchor is anchored at the moment of the deploy: every re-deploy moved every
  clinic's ticks to the deploy's second (a tick came early or late), gave every schedule a new
  id and made all the scheduled runs again;
- a schedule is updated in place by its slug (its id kept), an interval whose length is
  unchanged keeps its anchor (the ticks keep their times), a new tick interval takes the place of
  the old one (its id and pause kept), a schedule clinic.yaml no longer has is deleted and a new
  one created active;
- what a person paused stays paused: the deployment's ``paused`` and a schedule's ``active`` are
  never sent, unless ``resume`` (``relay deploy --resume-paused``) resumes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paused:
    """What a person had paused on a deployment this deploy updated: the whole deployment (the
    Prefect UI's toggle, ``pause_deployment``) and/or some of its schedules (a schedule's toggle,
    ``prefect deployment schedule pause``: slug -> its id). Left so, or ``resumed``."""

    name: str  # flow/deployment
    deployment: bool
    schedules: dict[str, str]
    resumed: bool = False

    def line(self, label: str) -> str:
        """The one line ``relay deploy`` says about it."""
        slugs = ", ".join(self.schedules)
        noun = "schedules" if len(self.schedules) > 1 else "schedule"
        what = (
            self.name if not slugs
            else f"{self.name} and its {noun} {slugs}" if self.deployment
            else f"{self.name}'s {noun} {slugs}"
        )  # fmt: skip
        if self.resumed:
            return f"{label}: resumed {what} (paused before this deploy; --resume-paused)"
        how = (["its toggle on the Prefect UI's Deployments page"] if self.deployment else []) + [
            f"`prefect deployment schedule resume {self.name} {sid}`"
            for sid in self.schedules.values()
        ]
        return (
            f"{label}: left {what} paused, as before this deploy; to resume: "
            f"{' and '.join(how)}; or `relay deploy --resume-paused` (resumes all that is paused)"
        )


def current(client, name: str):
    """The deployment ``flow/name`` as the server has it, or None."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def heartbeat_env() -> dict[str, str]:
    from relay.env import HEARTBEAT_SECONDS

    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}


def wanted(planned, pool: str, queue: str) -> dict:
    """The deployment's fields (its schedules apart) as ``relay deploy`` makes them."""
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
    from prefect.utilities.callables import parameter_schema

    flow = planned.flow
    fields = dict(
        entrypoint=f"{flow.fn.__module__}.{flow.fn.__name__}",  # a module path: no file path
        path=None,
        pull_steps=[],
        work_pool_name=pool,
        work_queue_name=queue,
        parameters=planned.parameters,
        parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
        enforce_parameter_schema=True,
        description=planned.description,
        job_variables={"env": heartbeat_env()},
    )
    if planned.one_at_a_time:
        fields.update(
            concurrency_limit=1,
            concurrency_options=ConcurrencyOptions(
                collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
        )
    return fields


def _has(before, field: str):
    """A field of the deployment as the server has it, in the shape ``wanted`` gives it."""
    if field == "concurrency_limit":
        limit = before.global_concurrency_limit
        return limit.limit if limit is not None else None
    if field == "pull_steps":
        return before.pull_steps or []
    return getattr(before, field)


def changed_fields(before, fields: dict) -> dict:
    """The fields that differ from the server's, to send. A pool or queue that changed is sent
    with the other (Prefect finds the queue by both)."""
    changed = {k: v for k, v in fields.items() if _has(before, k) != v}
    if {"work_pool_name", "work_queue_name"} & changed.keys():
        changed.update(work_pool_name=fields["work_pool_name"],
                       work_queue_name=fields["work_queue_name"])  # fmt: skip
    return changed


def same_schedule(has, wants) -> bool:
    """The same schedule: an interval of the same length (whatever its anchor: ours keeps the
    server's, so that the ticks keep their times), a cron with the same line and time zone."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if isinstance(has, IntervalSchedule) and isinstance(wants, IntervalSchedule):
        return has.interval == wants.interval
    if isinstance(has, CronSchedule) and isinstance(wants, CronSchedule):
        return (has.cron, has.timezone, has.day_or) == (wants.cron, wants.timezone, wants.day_or)
    return has == wants


def schedule_changes(before, planned, resume: bool) -> tuple[list, list, dict[str, str]]:
    """The schedules to send (DeploymentScheduleUpdate, by slug: changed, new, or resumed), the
    server's schedules to delete (no slug, or a slug clinic.yaml no longer makes) and the slugs
    renamed (new -> old). A new interval takes the place of one gone (``tick_every_minutes``
    changed: its slug, ``every-N-minutes``, with it), Prefect's ``replaces``: the schedule keeps
    its id and what a person paused. ``active`` is sent only to create a schedule (active) or to
    resume one."""
    from prefect.client.schemas.actions import DeploymentScheduleUpdate
    from prefect.client.schemas.schedules import IntervalSchedule

    has = {s.slug: s for s in before.schedules if s.slug}
    slugs = {s.slug for s in planned}
    gone = [s for s in before.schedules if s.slug not in slugs]
    send, renamed = [], {}
    for wants in planned:
        old = has.get(wants.slug)
        params = wants.parameters or {}  # sent each time: the server resets what is not
        update: dict = {}
        if old is None:
            old = next((g for g in gone if g.slug and isinstance(g.schedule, IntervalSchedule)
                        and isinstance(wants.schedule, IntervalSchedule)), None)  # fmt: skip
            if old is None:
                send.append(DeploymentScheduleUpdate(slug=wants.slug, schedule=wants.schedule,
                                                     parameters=params, active=True))  # fmt: skip
                continue
            gone.remove(old)
            renamed[wants.slug] = old.slug
            update["replaces"] = old.slug
        if (
            "replaces" in update
            or not same_schedule(old.schedule, wants.schedule)
            or (old.parameters or {}) != params
        ):
            update["schedule"] = wants.schedule
        if resume and not old.active:
            update["active"] = True
        if update:
            send.append(DeploymentScheduleUpdate(slug=wants.slug, parameters=params, **update))
    return send, gone, renamed


def apply(client, planned, pool: str, queue: str, resume: bool = False) -> Paused | None:
    """Create the deployment (matched by flow and name), or update what differs of it (above).
    Returns what was paused, for the output, or None."""
    flow = planned.flow
    name = f"{flow.name}/{planned.name}"
    before = current(client, name)
    fields = wanted(planned, pool, queue)
    if before is None:
        client.create_deployment(
            flow_id=client.create_flow(flow), name=planned.name,
            schedules=planned.schedules, paused=False, **fields,
        )  # fmt: skip
        return None
    from prefect.client.schemas.actions import DeploymentUpdate

    changes = changed_fields(before, fields)
    send, gone, renamed = schedule_changes(before, planned.schedules, resume)
    if resume and before.paused:
        changes["paused"] = False
    for schedule in gone:  # first: the update below then matches every schedule by its slug
        client.delete_deployment_schedule(before.id, schedule.id)
    if changes or send:
        update = DeploymentUpdate(**changes, **({"schedules": send} if send else {}))
        client.update_deployment(before.id, update)
    off = {s.slug: str(s.id) for s in before.schedules if s.slug and not s.active}
    held = {
        s.slug: off[renamed.get(s.slug, s.slug)]
        for s in planned.schedules
        if renamed.get(s.slug, s.slug) in off
    }
    if not (before.paused or held):
        return None
    return Paused(name, before.paused, held, resume)
