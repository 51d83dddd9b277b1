"""The SQL model runner: ``sql/**/*.sql`` -> tables in staging, marts and segments.

Beside it: ``project`` reads the files (models, data tests, their order), ``tables`` brings a
table to its model's new rows, ``membership`` records who joined and left each list and segment
(from the rows their tables lost and gained), ``functions`` is what the SQL calls. Here: one
build, its transaction and its record.

An incremental model selects what changed itself, with two DuckDB variables:
``getvariable('changes_since')`` (raw rows written after it are new: the newest raw write the
previous good build read) and ``getvariable('previous_built_at')`` (appointments that started
since then changed status). Variables are constants to DuckDB, so a filter on ``synced_at`` skips
unchanged storage without reading the JSON (a one-row table in a join would not). The runner
deletes the existing rows whose key appears in that selection and inserts it, so a tick's cost
follows the changes, not the history. When a model must be built in full (first build,
``--full-refresh``, its SQL, an upstream model's SQL or a setting that SQL reads from
state.build_context changed, e.g. the country or the tag categories) both are NULL while it runs
and the same SELECT returns everything.

A build is atomic: every model, data test and the membership history run in one DuckDB
transaction, committed once. A failing model (or data test) holds only what depends on it: the
pass is rolled back and run again, in a new transaction (DuckDB has no savepoints), without it
and every model reading it (``Project.readers``, the graph read from the SQL); those keep their
last good tables, the tests reading them are skipped, the rest commits together and
``PartialBuild`` names the file. The record (``summary.held``) is what tasks/models/holds.py
reads for the planner, journeys and dispatch. A held incremental model loses its fingerprint,
so it is rebuilt in full when it builds again. Unreadable files and cycles hold what reads
them; only two files building one table fail everything. ``build`` is the one way to run a
build (CLI, flow, tick).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from tasks.cliniko import fields as parsed_fields
from tasks.config import DEFAULT_TAG_CATEGORIES, MarketingListSettings
from tasks.errors import UserFacingError
from tasks.models import checks, shape, tables
from tasks.models import functions as models_functions
from tasks.models.holds import latest_build, require_good_build, rolled_back, what_was_held  # noqa: F401 (callers' path)
from tasks.models.membership import MemberChanges, record_membership
from tasks.models.project import SQL_DIR as SQL_DIR  # callers pass runner.SQL_DIR as sql_dir
from tasks.models.project import (
    TESTS_FOLDER,
    Broken,
    DataTest,
    Model,
    ModelError,
    Project,
    discover,
    remember_parses,
)
from tasks.triggers.definition import reference_lists
from tasks.warehouse import duckdb_message


class BuildFailed(UserFacingError):
    """A build stopped; every model is as it was before it started. ``holds``: the models a
    failure of ``file`` leaves as they were while the rest builds (None: the whole build)."""

    def __init__(
        self, build_id: str, file: str, message: str, holds: tuple[str, ...] | None = None
    ):
        super().__init__(f"{file}: {message}\n{rolled_back(build_id, file, holds)}")
        self.build_id = build_id
        self.file = file
        self.detail = message
        self.holds = holds


class PartialBuild(BuildFailed):
    """A build committed without the models a broken file holds (they keep their last good
    tables); what reads none of them is rebuilt, planned and sent as usual."""

    def __init__(self, result: BuildResult, broken: dict, held: dict, new: list[str]):
        UserFacingError.__init__(  # new: held models no build has made yet
            self,
            "\n".join(f"{file}: {message}" for file, message in broken.items())
            + f"\nThe build ({result.build_id}) {what_was_held(held, len(result.rows), new)} "
            "Fix the file and run `relay models build`.",
        )
        self.build_id, self.result, self.broken, self.held = result.build_id, result, broken, held
        self.file, self.detail = next(iter(broken.items()))
        self.holds = tuple(held)


@dataclass(frozen=True)
class ListSettings:
    """The clinic's marketing-list settings as the models read them (state.build_context)."""

    country: str = "AU"
    clinic_time_zone: str = "Australia/Melbourne"
    active_patient_months: int | None = 24
    list_size_cap: int | None = None
    honour_email_opt_in: bool = False
    cap_order: str = "most_recent_visit"
    soft_bounce_limit: int = MarketingListSettings().soft_bounce_limit  # its one home: config
    # trimmed, lower-case: matched as trigger category names are (reference_lists)
    tag_categories: tuple[str, ...] = tuple(reference_lists(DEFAULT_TAG_CATEGORIES)[1])

    @classmethod
    def from_config(cls, cfg) -> ListSettings:  # cfg: tasks.config.ClinicConfig
        ml = cfg.marketing_list
        return cls(
            country=cfg.country,
            clinic_time_zone=cfg.time_zone,
            active_patient_months=ml.active_patient_months,
            list_size_cap=ml.size_cap,
            honour_email_opt_in=ml.honour_cliniko_email_opt_in,
            cap_order=ml.cap_keeps,
            soft_bounce_limit=ml.soft_bounce_limit,
            tag_categories=tuple(reference_lists(cfg.tag_categories)[1]),
        )


@dataclass
class BuildResult:
    """Counts only: safe for logs, Prefect results and artifacts."""

    build_id: str
    built_at: datetime
    rows: dict[str, int | None] = field(default_factory=dict)
    tests_passed: int = 0
    audiences: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"rows": self.rows, "tests_passed": self.tests_passed, "audiences": self.audiences}


class ModelBuild:
    """One build, step by step: ``prepare()`` reads the project and opens the transaction,
    ``run_model()`` materialises one model, ``run_tests()`` runs the data tests, ``finish()``
    records membership and commits; ``abort()`` rolls back and records why. ``build`` calls them
    in order and owns what a failure does."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        project: Project,
        settings: ListSettings,
        *,
        now: datetime | None = None,
        full_refresh: bool = False,
        failures: tuple[Broken, ...] | list[Broken] = (),
    ):
        self.con = con
        self.project = project
        self.settings = settings
        self.full_refresh = full_refresh
        # What this build leaves as it was: file -> why it broke, and each model it holds (the
        # file's own model and every model reading it) -> that file.
        broken = [*project.broken, *failures]
        self.broken = {b.file: b.message for b in broken}
        self.held: dict[str, str] = {}
        # Models this build left as the last commit had them, and the tests run or needed not.
        self.unchanged: set[str] = set()
        self.tests_run: list[DataTest] = []
        self.together = True  # the data tests in one statement (checks.count_together)
        for b in broken:
            roots = [b.relation] if b.relation else []
            for relation in sorted(project.readers(roots)):
                self.held.setdefault(relation, b.file)
        # The phone memo: told when the build starts, before each model, and how it ended.
        self.memo = models_functions.BuildMemo(settings.country)
        self.started_at = datetime.now(UTC)
        self.result = BuildResult(
            build_id=f"{self.started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
            built_at=now or self.started_at,
        )

    @property
    def build_id(self) -> str:
        return self.result.build_id

    def start(self) -> None:
        con = self.con
        models_functions.register(con)
        self.remembered = shape.remember_patients(con)  # before the transaction: its docstring
        con.execute("BEGIN TRANSACTION")
        con.execute(  # replaced_patients (tasks/models/functions.py): this build's merges
            "CREATE OR REPLACE TEMP TABLE relay_replaced (relation VARCHAR, patient_id BIGINT)"
        )
        parsed_fields.fill_missing(con)  # raw rows written without their parsed fields
        remember_parses(con, self.project)  # for the next build's process
        s = self.settings
        previous = con.execute(
            "SELECT data_high_water, built_at FROM state.model_builds "
            "WHERE status = 'succeeded' ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
        self.changes_since, self.previous_built_at = previous or (None, None)
        writes = tables.raw_writes(con)  # one query for both
        self.data_high_water = tables.data_high_water(con, writes)
        self.unchanged |= tables.raw_unchanged(writes, self.changes_since, self.full_refresh)
        self._set_changes(self.changes_since, self.previous_built_at)
        # a constant: refreshed_by = getvariable('build_id') skips older storage (sql/README.md)
        con.execute("SET VARIABLE build_id = ?", [self.build_id])
        con.execute("DELETE FROM state.build_context")
        # by name: state.build_context's columns are the build's id and clock, then the settings
        row = {"build_id": self.build_id, "built_at": self.result.built_at, **asdict(s)}
        row["tag_categories"] = list(s.tag_categories)
        con.execute(
            f"INSERT INTO state.build_context ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
        self.memo.start(con, None if self.full_refresh else self.changes_since)
        self.fingerprints = tables.Fingerprints(con)  # after fill_missing, which may clear them
        self.changes = MemberChanges(con, self.project)  # what lists and segments lost and gained
        # Tables and views in place before this build (read once, not once per model).
        p = self.project  # its tests and models (tasks/models/tables.py: what each reads)
        self.tables = tables.ModelTables(con, self.full_refresh, p.tests, p.models)
        self.existing = self.tables.existing
        self._drop_orphans()

    def _set_changes(self, since: datetime | None, previous: datetime | None) -> None:
        self.con.execute("SET VARIABLE changes_since = ?::TIMESTAMPTZ", [since])
        self.con.execute("SET VARIABLE previous_built_at = ?::TIMESTAMPTZ", [previous])

    def _drop_orphans(self) -> None:
        """Tables and views whose file was deleted go too: nothing downstream may read a model
        nobody maintains. A deleted segment's audience is retired without leave events."""
        known = {m.relation for m in self.project.models} | set(self.held)
        for relation, kind in list(self.existing.items()):
            if relation not in known:
                schema, name = relation.split(".", 1)
                self.con.execute(f'DROP {kind.upper()} "{schema}"."{name}"')
                self.tables.dropped(relation)
        retired = [
            r[0]
            for r in self.con.execute(
                "SELECT audience FROM state.audiences WHERE retired_at IS NULL "
                "AND audience LIKE 'segments.%'"
            ).fetchall()
            if r[0] not in known
        ]
        for audience in retired:
            self.con.execute("DELETE FROM state.audience_members WHERE audience = ?", [audience])
            self.con.execute(
                "UPDATE state.audiences SET retired_at = ? WHERE audience = ?",
                [self.result.built_at, audience],
            )

    def run_model(self, model: Model) -> int | None:
        """Materialise one model; returns its row count (None for a view)."""
        try:
            self.memo.before_model(self.con, model.depends_on)
            rows = self._materialise(model)
        except duckdb.Error as exc:
            raise BuildFailed(
                self.build_id, model.file, duckdb_message(exc, model.sql), (model.relation,)
            ) from None
        self.result.rows[model.relation] = rows
        return rows

    def _materialise(self, model: Model) -> int | None:
        con, rel, known = self.con, f'"{model.schema}"."{model.name}"', self.tables
        existing = self.existing.get(model.relation)
        if model.materialized == "view":
            if existing == "table":
                con.execute(f"DROP TABLE {rel}")
                known.dropped(model.relation)
            if tables.same_view(self.fingerprints, model, existing, self.unchanged):
                self.unchanged.add(model.relation)
            else:
                con.execute(f"CREATE OR REPLACE VIEW {rel} AS {model.sql}")
                shape.check_shape(con, model, rel)  # a segment made a view, as a table's
            return None
        if existing == "view":
            con.execute(f"DROP VIEW {rel}")
            existing = None
        same = False  # rows and SQL as at the last commit, which checked them: not checked again
        if model.materialized == "incremental":
            fingerprint = tables.fingerprint(model, self.project, asdict(self.settings))
            previous = self.fingerprints.get(model.relation)
            if (
                existing
                and not self.full_refresh
                and self.changes_since is not None
                and previous == fingerprint
            ):
                note = self.changes.note(model.relation)
                if not tables.merge(con, model, rel, known, note, self.unchanged):
                    self.unchanged.add(model.relation)
            else:
                self._set_changes(None, None)
                known.create(con, model.relation, rel, model.full_sql)
                self._set_changes(self.changes_since, self.previous_built_at)
                shape.check_unique(con, rel, model.key)
            self.fingerprints.keep(model.relation, fingerprint)
        else:
            f, note = self.fingerprints, self.changes.note(model.relation)
            same = tables.same_table(f, model, self.project, self.settings, self.unchanged)
            if existing != "table":
                known.create(con, model.relation, rel, model.sql)
            elif same or not tables.replace_changed_rows(con, model, rel, known, note):
                self.unchanged.add(model.relation)
            same = existing == "table"  # as it was, or its new rows checked (check_shape)
        if not (same or model.materialized == "incremental" and model.relation in self.unchanged):
            shape.check_shape(con, model, rel, known.columns.get(model.relation))
        return known.rows[model.relation]

    def run_tests(self) -> int:
        """Run the data tests of what this build rebuilt (a test reading a held model tested
        its table when it was built). A failing test holds the models it reads; one that cannot
        run holds nothing but itself. First: segments' rows that came (``check_segments``)."""
        if failed := self.tables.check_segments(self.con, self.project, self.held, self.remembered):
            raise BuildFailed(self.build_id, *failed)  # file, why, what it holds: itself
        built = {m.relation for m in self.project.models} - set(self.held)
        tests = [
            t
            for t in self.project.tests
            if t.file not in self.broken and not set(t.depends_on) & set(self.held)
        ]
        self.tests_run = tests
        run = checks.tests_to_run(self.fingerprints, tests, self.unchanged)
        f, known = self.fingerprints, self.tables
        counted = checks.count_together(self.con, run, f, known) if self.together else {}
        for test in run:
            try:
                failures = counted.get(test.file)
                if failures is None:
                    failures = checks.count_failures(self.con, test, f, known)
            except ModelError as exc:
                raise BuildFailed(self.build_id, test.file, _detail(exc), ()) from None
            if failures:
                raise BuildFailed(
                    self.build_id,
                    test.file,
                    f"data test failed: {failures} offending row(s). Run `relay models test` "
                    "after fixing the models, or query the test's SELECT to see them.",
                    tuple(d for d in test.depends_on if d in built) or None,
                )
        self.result.tests_passed = len(tests)
        return len(tests)

    def finish(self) -> BuildResult:
        """Record membership and the build, then commit: the new models become visible at once."""
        rebuilt = Project(tuple(m for m in self.project.models if m.relation not in self.held), ())
        built = (self.build_id, self.result.built_at)
        try:
            self.result.audiences = record_membership(
                self.con, rebuilt, *built, self.unchanged, self.changes.noted
            )
        except duckdb.Error as exc:
            raise BuildFailed(
                self.build_id, "tasks/models/membership.py", duckdb_message(exc)
            ) from None
        self.memo.keep(self.con)
        # A held incremental model missed the changes this build read: built in full next time.
        self.fingerprints.forget(self.held)
        checks.keep_test_fingerprints(self.fingerprints, self.project.tests, self.tests_run)
        self.tables.finish(self.con)
        first = next(iter(self.broken.items()), (None, None))
        self.con.execute(
            "INSERT INTO state.model_builds VALUES (?, ?, now(), 'succeeded', ?, ?, ?, ?, ?)",
            [
                self.build_id,
                self.started_at,
                self.result.built_at,
                self.data_high_water,
                *first,
                json.dumps({**self.result.summary(), "held": self.held, "broken": self.broken}),
            ],
        )
        self.con.execute("COMMIT")
        return self.result

    @classmethod
    def prepare(
        cls,
        con: duckdb.DuckDBPyConnection,
        settings: ListSettings,
        *,
        sql_dir: Path | None = None,
        now: datetime | None = None,
        full_refresh: bool = False,
        failures: tuple[Broken, ...] | list[Broken] = (),
    ) -> ModelBuild:
        """Read the project and start a build, holding ``failures`` (what broke in an earlier
        pass) and the files the runner cannot use (unknown table, two statements...).
        Two files building one table fail it before it touches anything, recorded too."""
        try:
            project = discover(con, sql_dir, keep_going=True)
        except ModelError as exc:
            named = re.search(r"sql/\S+?\.sql", str(exc))
            cls(con, Project((), ()), settings, now=now)._record_failure(
                named.group(0) if named else None, str(exc)
            )
            raise
        run = cls(con, project, settings, now=now, full_refresh=full_refresh, failures=failures)
        run.start()
        return run

    def abort(self, failure: BuildFailed | None) -> None:
        """Roll back everything this build did, then record (on its own) that it failed; an
        interruption (``None``: Ctrl-C, a cancelled run) is rolled back but not recorded."""
        self.con.execute("ROLLBACK")
        self.memo.drop()
        if failure is not None:
            self._record_failure(failure.file, failure.detail)

    def _record_failure(self, file: str | None, message: str) -> None:
        self.con.execute(
            "INSERT INTO state.model_builds VALUES (?, ?, now(), 'failed', ?, NULL, ?, ?, NULL)",
            [self.build_id, self.started_at, self.result.built_at, file, message],
        )


class Steps:
    """How ``build`` runs each step: here, plain calls. flows/models.py runs each as a Prefect
    task instead (a model's task waits on the tasks of the models it reads: the DAG in the UI).
    The order, the transaction and what a failure records stay in ``build``."""

    def model(self, run: ModelBuild, model: Model, upstream: list) -> object:
        """Materialise ``model``. ``upstream``: what this returned for the models it reads."""
        return run.run_model(model)

    def tests(self, run: ModelBuild) -> None:
        run.run_tests()

    def finish(self, run: ModelBuild) -> None:
        run.finish()


def build(
    con: duckdb.DuckDBPyConnection,
    settings: ListSettings,
    *,
    sql_dir: Path | None = None,
    now: datetime | None = None,
    full_refresh: bool = False,
    steps: Steps | None = None,
) -> BuildResult:
    """Build every model, test it and record membership, in one transaction.

    A model or data test that fails holds what depends on it: the pass is rolled back and the
    build runs again without them, committing the rest and raising PartialBuild. Raises
    ModelError on two files building one table (nothing is touched) and BuildFailed when a
    failure holds everything (rolled back); all are recorded in state.model_builds, whichever ``steps`` ran them.
    """
    steps = steps or Steps()
    failures: list[Broken] = []
    together = True
    while True:
        run = ModelBuild.prepare(
            con, settings, sql_dir=sql_dir, now=now, full_refresh=full_refresh, failures=failures
        )
        run.together = together
        try:
            done: dict[str, object] = {}
            for model in run.project.models:
                if model.relation in run.held:
                    continue
                upstream = [done[d] for d in model.depends_on if d in done]
                done[model.relation] = steps.model(run, model, upstream)
            steps.tests(run)
            steps.finish(run)
        except BuildFailed as failure:
            if failure.holds is None or failure.file in run.broken:
                run.abort(failure)  # the whole build, said so (holds=None)
                raise BuildFailed(run.build_id, failure.file, failure.detail) from None
            run.abort(None)  # this pass only: the next one holds what the failure reaches
            failures += [Broken(failure.file, r, failure.detail) for r in failure.holds or [None]]
            continue
        except checks.TogetherFailed:
            run.abort(None)  # again, one test at a time: that names the test that cannot run
            together = False
            continue
        except ModelError as exc:
            failed = BuildFailed(run.build_id, str(exc).split(":", 1)[0], _detail(exc))
            run.abort(failed)
            raise failed from None
        except BaseException:
            run.abort(None)
            raise
        if run.broken:
            new = [r for r in run.held if r not in run.existing]  # nothing last good to keep
            raise PartialBuild(run.result, run.broken, run.held, new)
        return run.result


def _detail(exc: ModelError) -> str:
    return str(exc).split(": ", 1)[-1]


def run_tests(con: duckdb.DuckDBPyConnection, sql_dir: Path | None = None) -> dict[str, int]:
    """Run the data tests against the models as built (the last good tables, after a failed
    build too): test file -> offending row count. A file that cannot be read raises."""
    project = discover(con, sql_dir, keep_going=True)
    for broken in project.broken:
        if broken.file.startswith(f"sql/{TESTS_FOLDER}/"):
            raise ModelError(f"{broken.file}: {broken.message}")
    models_functions.register(con)
    return {test.file: checks.count_failures(con, test) for test in project.tests}
