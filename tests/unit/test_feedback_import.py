"""Importing an unsubscribe list: a Mailchimp export suppresses each address once, for marketing,
all or nothing."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from tasks.feedback import Book
from tasks.feedback_import import ImportRefused, import_unsubscribes
from tasks.messages import ledger
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def con():
    with contextlib.closing(memory_db()) as con:
        yield con


def marketing_blocked(con, address: str) -> bool:
    return bool(ledger.suppressed_addresses(con, "email", [address], "marketing"))


def suppression_rows(con):
    return con.execute(
        "SELECT channel, address, action, reason, scope, source FROM state.suppressions "
        "ORDER BY suppression_id"
    ).fetchall()


def write_csv(tmp_path, text: str, name="unsubscribed_members.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MAILCHIMP = (
    "\ufeffEmail Address,First Name,Last Name,UNSUB_TIME\n"
    "ann@example.com,Ann,A,2026-01-02 10:00:00\n"
    "BOB@Example.com ,Bob,B,2026-01-03 10:00:00\n"
    "ann@example.com,Ann,A,2026-01-04 10:00:00\n"
    "\n"
)


def test_a_mailchimp_export_unsubscribes_each_address_once(con, tmp_path):
    result = import_unsubscribes(con, write_csv(tmp_path, MAILCHIMP), NOW)

    assert result.as_dict() == {"imported": 2, "already_unsubscribed": 0, "duplicate": 1,
                                "invalid": 0}  # fmt: skip
    assert result.column == "Email Address"
    assert marketing_blocked(con, "ann@example.com") and marketing_blocked(con, "bob@example.com")
    assert {r[5] for r in suppression_rows(con)} == {"csv_import"}
    evidence = con.execute("SELECT evidence FROM state.suppressions ORDER BY 1").fetchall()
    assert evidence == [("unsubscribed_members.csv line 2",), ("unsubscribed_members.csv line 3",)]


def test_importing_the_same_file_again_adds_nothing(con, tmp_path):
    path = write_csv(tmp_path, MAILCHIMP)
    import_unsubscribes(con, path, NOW)
    again = import_unsubscribes(con, path, NOW + timedelta(hours=1))
    assert (again.imported, again.already) == (0, 2)
    assert len(suppression_rows(con)) == 2


def test_an_invalid_address_refuses_the_whole_file_naming_its_line(con, tmp_path):
    path = write_csv(tmp_path, "email;name\nann@example.com;Ann\nnot-an-address;X\n")
    with pytest.raises(ImportRefused, match=r"line\(s\) 3\. Nothing was imported"):
        import_unsubscribes(con, path, NOW)
    assert suppression_rows(con) == []


def test_skip_invalid_imports_the_valid_rest_and_counts_the_invalid(con, tmp_path):
    path = write_csv(tmp_path, "email;name\nann@example.com;Ann\nnot-an-address;X\n")
    result = import_unsubscribes(con, path, NOW, skip_invalid=True)
    assert (result.imported, result.invalid, result.invalid_lines) == (1, 1, [3])


def test_a_file_without_a_header_is_refused_without_repeating_its_first_address(con, tmp_path):
    path = write_csv(tmp_path, "ann@example.com,Ann\nbob@example.com,Bob\n")
    with pytest.raises(ImportRefused, match="header line") as refused:
        import_unsubscribes(con, path, NOW)
    assert "ann@" not in str(refused.value)


def test_a_file_without_an_email_column_is_refused_with_what_to_name_it(con, tmp_path):
    path = write_csv(tmp_path, "name,phone\nAnn,0400\n")
    with pytest.raises(ImportRefused, match="Email Address"):
        import_unsubscribes(con, path, NOW)


def test_an_import_that_fails_before_its_commit_writes_nothing(con, tmp_path, monkeypatch):
    path = write_csv(tmp_path, MAILCHIMP)
    real = Book.write

    def written_then_killed(book, con):
        real(book, con)
        raise KeyboardInterrupt

    monkeypatch.setattr(Book, "write", written_then_killed)
    with pytest.raises(KeyboardInterrupt):
        import_unsubscribes(con, path, NOW)
    assert suppression_rows(con) == []


def test_a_folder_or_unreadable_file_is_refused_in_one_line(con, tmp_path):
    with pytest.raises(ImportRefused, match="cannot be read"):
        import_unsubscribes(con, tmp_path, NOW)
    assert suppression_rows(con) == []


def test_lines_are_the_files_own_after_a_note_written_over_two_lines(con, tmp_path):
    # Mailchimp's free-text columns (UNSUB_REASON_OTHER, NOTES) keep a patient's line breaks in
    # quotes: the lines named (refusal, evidence) are the file's, as an editor numbers them
    text = (
        '"Email Address","UNSUB_REASON_OTHER"\n'
        '"ann@example.com","too many\nemails, sorry"\n'
        '"not-an-address","x"\n'
        '"bob@example.com","y"\n'
    )
    with pytest.raises(ImportRefused, match=r"on line\(s\) 4\. "):
        import_unsubscribes(con, write_csv(tmp_path, text), NOW)
    import_unsubscribes(con, write_csv(tmp_path, text), NOW, skip_invalid=True)
    evidence = con.execute("SELECT evidence FROM state.suppressions ORDER BY 1").fetchall()
    assert evidence == [("unsubscribed_members.csv line 2",), ("unsubscribed_members.csv line 5",)]
