"""raw_changes, an incremental staging model's source: the rows of a raw table the sync wrote
(stored, or marked removed) since changes_since, read by id when the build listed them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.models import functions
from tasks.warehouse import RAW_COLUMNS, memory_db

SINCE = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


@pytest.fixture
def con():
    con = memory_db()
    functions.register(con)
    rows = [
        (1, SINCE - timedelta(hours=1), None),  # written before: not a change
        (2, SINCE + timedelta(minutes=1), None),  # stored since
        (3, SINCE - timedelta(hours=1), SINCE + timedelta(minutes=2)),  # marked removed since
        (4, SINCE - timedelta(hours=2), SINCE - timedelta(hours=1)),  # removed before
        (5, SINCE + timedelta(minutes=3), SINCE + timedelta(minutes=3)),  # both: once
    ]
    for id_, synced, removed in rows:
        con.execute(
            f"INSERT INTO raw.patients {RAW_COLUMNS} VALUES (?, NULL, '{{}}', ?, ?)",
            [id_, synced, removed],
        )
    yield con
    con.close()


def _changes(con, since: datetime | None) -> list[int]:
    con.execute("SET VARIABLE changes_since = ?::TIMESTAMPTZ", [since])
    return [
        r[0]
        for r in con.execute("SELECT id FROM raw_changes('raw.patients') ORDER BY id").fetchall()
    ]


def test_the_rows_stored_or_removed_since_are_read_with_or_without_their_ids_listed(con):
    assert _changes(con, SINCE) == [2, 3, 5]
    functions.note_changed_ids(con, SINCE)
    assert _changes(con, SINCE) == [2, 3, 5]
    assert _changes(con, None) == [1, 2, 3, 4, 5]  # a model built in full reads every row


def test_the_listed_ids_are_what_is_read_while_changes_since_is_theirs(con):
    functions.note_changed_ids(con, SINCE)
    # A row written after the list was made is not read through it (a build's raw tables do
    # not change while it runs: it reads them in its own transaction)...
    con.execute(
        f"INSERT INTO raw.patients {RAW_COLUMNS} VALUES (6, NULL, '{{}}', ?, NULL)",
        [SINCE + timedelta(minutes=5)],
    )
    assert _changes(con, SINCE) == [2, 3, 5]
    # ... and a list made for another changes_since is never used.
    assert _changes(con, SINCE + timedelta(minutes=2)) == [5, 6]


def test_a_large_change_is_read_by_its_timestamps_not_listed(con, monkeypatch):
    monkeypatch.setattr(functions, "CHANGED_IDS_MAX", 2)
    functions.note_changed_ids(con, SINCE)
    listed = con.execute("SELECT getvariable('relay_changed_ids').ids").fetchone()[0]
    assert "raw.patients" not in listed
    assert _changes(con, SINCE) == [2, 3, 5]


def test_a_full_build_lists_nothing(con):
    functions.note_changed_ids(con, SINCE)
    functions.note_changed_ids(con, None)
    assert con.execute("SELECT getvariable('relay_changed_ids')").fetchone()[0] is None
    assert _changes(con, SINCE) == [2, 3, 5]
