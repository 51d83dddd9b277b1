"""An operator's record of a fresh opt-in (tasks/feedback_optin.py): what it lifts, what it will
not, and that events from before it, read by a later pull, stop nothing again.

Postmark's side (its own suppressions, reactivated) and the command itself:
tests/integration/test_opt_in.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks import feedback
from tasks import feedback_optin as optin
from tasks.messages import ledger
from tasks.warehouse import memory_db

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
EMAIL = "pat@example.com"
MOBILE = "+61411111111"


@pytest.fixture
def con():
    con = memory_db()
    yield con
    con.close()


def suppress(con, reason, scope="marketing", *, channel="email", address=EMAIL, source="x",
             at=NOW - timedelta(days=3)):  # fmt: skip
    ledger.add_suppression(con, channel=channel, address=address, scope=scope, reason=reason,
                           source=source, evidence="e", occurred_at=at)  # fmt: skip


def blocked(con, purpose="marketing", channel="email", address=EMAIL) -> bool:
    return bool(ledger.suppressed_addresses(con, channel, [address], purpose))


def opt_in(con, channel="email", address=EMAIL, **kw):
    return optin.record(con, channel, address, evidence="phoned 9 March, asked to get offers",
                        by="reception", now=NOW, **kw)  # fmt: skip


def test_an_unsubscribe_is_lifted_with_the_operators_evidence(con):
    suppress(con, "unsubscribed", source="unsubscribe_link")
    lifted, recorded = opt_in(con, address=" Pat@Example.com ")
    assert recorded and [(h.scope, h.reason, h.source) for h in lifted] == [
        ("marketing", "unsubscribed", "unsubscribe_link")
    ]
    assert not blocked(con)
    row = con.execute(
        "SELECT action, reason, scope, source, evidence FROM state.suppressions "
        "ORDER BY suppression_id DESC LIMIT 1"
    ).fetchone()
    assert row == ("lift", "opt_in", "marketing", "operator",
                   "reception: phoned 9 March, asked to get offers")  # fmt: skip


def test_an_address_with_no_suppression_records_nothing(con):
    assert opt_in(con) == ([], False)
    assert con.execute("SELECT count(*) FROM state.suppressions").fetchone() == (0,)


@pytest.mark.parametrize("reason", ["hard_bounce", "invalid_address", "soft_bounce_limit"])
def test_a_bounce_stays_unless_the_address_is_confirmed_deliverable(con, reason):
    suppress(con, reason, "all" if reason != "soft_bounce_limit" else "marketing")
    with pytest.raises(optin.OptInRefused, match="--deliverable"):
        opt_in(con)
    assert blocked(con)
    lifted, _ = opt_in(con, deliverable=True)
    assert [h.reason for h in lifted] == [reason] and not blocked(con, "transactional")
    assert not blocked(con)


def test_all_or_nothing_an_unsubscribe_stays_beside_a_bounce(con):
    suppress(con, "unsubscribed")
    suppress(con, "hard_bounce", "all")
    with pytest.raises(optin.OptInRefused):
        opt_in(con)
    assert (
        con.execute("SELECT count(*) FROM state.suppressions WHERE action = 'lift'").fetchone()[0]
        == 0
    )


def test_a_spam_complaint_needs_its_own_flag(con):
    suppress(con, "spam_complaint")
    with pytest.raises(optin.OptInRefused, match="--despite-complaint"):
        opt_in(con, deliverable=True)
    assert opt_in(con, despite_complaint=True)[1] and not blocked(con)


def test_an_sms_stop_is_never_lifted_by_hand(con):
    suppress(con, "stop", "all", channel="sms", address=MOBILE, source="twilio")
    with pytest.raises(optin.OptInRefused, match="texts START"):
        opt_in(con, "sms", MOBILE, deliverable=True, despite_complaint=True)
    assert blocked(con, channel="sms", address=MOBILE)


def test_an_sms_unsubscribe_through_our_link_is_lifted(con):
    suppress(con, "unsubscribed", channel="sms", address=MOBILE, source="unsubscribe_link")
    assert opt_in(con, "sms", MOBILE)[1] and not blocked(con, channel="sms", address=MOBILE)


@pytest.mark.parametrize(
    ("channel", "address"), [("email", "not an address"), ("sms", "0411 111 111"), ("sms", EMAIL)]
)
def test_an_address_not_valid_for_the_channel_is_refused(con, channel, address):
    with pytest.raises(optin.OptInRefused, match=f"--channel {channel}"):
        opt_in(con, channel, address)


def test_evidence_is_required(con):
    suppress(con, "unsubscribed")
    with pytest.raises(optin.OptInRefused, match="--evidence"):
        optin.record(con, "email", EMAIL, evidence="  ", by="x", now=NOW)
    assert blocked(con)


def bounce(bounce_id, at, kind="other", unsubscribe=False, stream="broadcast"):
    return feedback.Bounce(bounce_id, EMAIL, kind, at, None, stream, "Unsubscribe", "marketing",
                           unsubscribe)  # fmt: skip


def test_older_events_read_after_the_opt_in_stop_nothing_newer_ones_do(con):
    """The next pull reads from a day before its cursor: a bounce or an unsubscribe from before
    the opt-in, read only now, must not take the address off again; one after it must."""
    suppress(con, "hard_bounce", "all", source="postmark")
    opt_in(con, deliverable=True)
    counts = feedback.record_bounces(
        con, "postmark",
        [bounce("b1", NOW - timedelta(hours=2), unsubscribe=True),  # marketing, before
         bounce("b2", NOW - timedelta(hours=1), kind="hard")],  # all, before
        NOW + timedelta(minutes=5), soft_bounce_limit=5,
    )  # fmt: skip
    assert not blocked(con) and not blocked(con, "transactional")
    assert not any(k.startswith("suppressed_") for k in counts), counts
    feedback.record_bounces(con, "postmark", [bounce("b3", NOW + timedelta(hours=1),
                                                     unsubscribe=True)],
                            NOW + timedelta(hours=2), soft_bounce_limit=5)  # fmt: skip
    assert blocked(con) and not blocked(con, "transactional")


def test_a_reactivation_at_the_provider_alone_is_recorded_so_its_old_events_stay_lifted(con):
    """Nothing held here yet (the hard bounce not pulled), Postmark's reactivated: the opt-in
    still records its lift, and the bounce pulled afterwards stops nothing."""
    lifted, recorded = opt_in(con, deliverable=True, provider_scopes=frozenset({"all"}))
    assert lifted == [] and recorded
    feedback.record_bounces(con, "postmark", [bounce("b1", NOW - timedelta(days=1), kind="hard")],
                            NOW + timedelta(minutes=5), soft_bounce_limit=5)  # fmt: skip
    assert not blocked(con, "transactional") and not blocked(con)


def test_consent_is_read_from_the_last_build(con):
    assert optin.consent(con, "email", EMAIL) is None  # no build yet
    con.execute(
        "CREATE TABLE marts.patients (patient_id BIGINT, email_normalised VARCHAR, "
        "mobile_e164 VARCHAR, accepted_email_marketing BOOLEAN, accepted_sms_marketing BOOLEAN, "
        "is_archived BOOLEAN)"
    )
    con.execute(f"INSERT INTO marts.patients VALUES (7, '{EMAIL}', '{MOBILE}', NULL, true, false)")
    assert optin.consent(con, "email", EMAIL.upper()) == [optin.Consent(7, None, False)]
    assert optin.consent(con, "sms", MOBILE) == [optin.Consent(7, True, False)]
