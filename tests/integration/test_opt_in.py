"""`relay patients opt-in` on a clinic sending through Postmark (the sandbox, the real postmarker
client): Postmark's own suppression of the address is reactivated before the lift is recorded,
one it keeps (a spam complaint) refuses the whole opt-in, and the next feedback pull, which
re-reads from a day before its cursor, takes nothing off again.

What is lifted and what is not, without a provider: tests/unit/test_feedback_optin.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

import blocks.resolve
from relay.cli import app
from sandbox.postmark import PostmarkSandbox
from tasks import feedback_optin
from tasks.config import load_clinic
from tasks.messages import ledger
from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
from tasks.providers.postmark_suppressions import holds
from tasks.warehouse import open_db

pytestmark = pytest.mark.integration

EMAIL = "pat@example.com"
EVIDENCE = "phoned reception 9 March 2026, asked for the newsletter again"


@pytest.fixture
def postmark(data_dir, monkeypatch):
    sandbox = PostmarkSandbox()
    with sandbox.serve() as server:

        def provider() -> PostmarkProvider:
            return PostmarkProvider(
                PostmarkSettings(server_token=sandbox.server_token, from_address="d@demo.example",
                                 base_url=server.url, timeout=5)
            )  # fmt: skip

        monkeypatch.setattr(blocks.resolve, "providers_for", lambda config: {"email": provider()})
        sandbox.new_provider = provider
        yield sandbox


@pytest.fixture
def db(data_dir):
    path = load_clinic("demo").database_path
    with open_db(path):
        pass
    return path


def pull(sandbox, db) -> None:
    """The tick's feedback step for Postmark: every stream's bounces and suppression dump."""
    provider = sandbox.new_provider()
    with open_db(db) as con:
        for feed in provider.feedback_feeds(5):
            feed.pull(con, datetime.now(UTC))
    provider.close()


def blocked(db, purpose="marketing") -> bool:
    with open_db(db, read_only=True) as con:
        return bool(ledger.suppressed_addresses(con, "email", [EMAIL], purpose))


def opt_in(*flags):
    return CliRunner().invoke(
        app, ["patients", "opt-in", EMAIL, "--channel", "email", "--clinic", "demo",
              "--evidence", EVIDENCE, "--by", "reception", *flags],
    )  # fmt: skip


def test_a_postmark_unsubscribe_is_reactivated_there_and_lifted_here(postmark, db):
    postmark.suppress(EMAIL, "broadcast", at=datetime.now(UTC) - timedelta(hours=2))
    pull(postmark, db)
    assert blocked(db) and not blocked(db, "transactional")

    out = opt_in()
    assert out.exit_code == 0, out.output
    assert "marketing (unsubscribed, from postmark" in out.output
    assert "Postmark: reactivated on stream 'broadcast'" in out.output
    assert "not checked: no model build yet" in out.output
    assert EMAIL not in out.output  # said back as "this address", never echoed
    assert EMAIL not in postmark.inactive_on("broadcast")
    assert not blocked(db)

    pull(postmark, db)  # the next tick re-reads the dump from a day before its cursor
    assert not blocked(db)
    provider = postmark.new_provider()
    assert holds(provider, EMAIL) == []
    provider.close()


def test_a_spam_complaint_postmark_keeps_refuses_the_opt_in(postmark, db):
    postmark.bounce(EMAIL, "SpamComplaint", stream="broadcast")
    pull(postmark, db)
    out = opt_in("--despite-complaint")
    assert isinstance(out.exception, feedback_optin.OptInRefused)
    assert "Postmark support" in str(out.exception)
    assert blocked(db) and EMAIL in postmark.inactive_on("broadcast")


def test_a_hard_bounce_not_pulled_yet_needs_deliverable_and_stays_lifted(postmark, db):
    postmark.bounce(EMAIL, "HardBounce", stream="broadcast",
                    at=datetime.now(UTC) - timedelta(hours=1))  # fmt: skip
    out = opt_in()
    assert isinstance(out.exception, feedback_optin.OptInRefused)
    assert "--deliverable" in str(out.exception) and EMAIL in postmark.inactive_on("broadcast")

    out = opt_in("--deliverable")
    assert out.exit_code == 0, out.output
    assert "no suppression in demo: the opt-in is recorded" in out.output
    assert EMAIL not in postmark.inactive_on("broadcast")
    pull(postmark, db)  # the bounce from before the opt-in arrives only now
    assert not blocked(db) and not blocked(db, "transactional")


def test_an_address_with_nothing_anywhere_records_nothing(postmark, db):
    out = opt_in()
    assert out.exit_code == 0, out.output
    assert "no suppression in demo: nothing recorded" in out.output
    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM state.suppressions").fetchone() == (0,)
