"""Sending throughput: dispatch renders due messages and sends them through the sandboxes.

Targets (issue 4 §6): 10,000 due emails rendered and sent through the sandbox Postmark batch API
at >= 2,000 messages/s; 1,000 SMS through the sandbox Twilio, reported as messages/s.
Everything is real: a DuckDB file for the ledger, the sandboxes over HTTP on 127.0.0.1 (served
from a separate process, as a provider would be), postmarker and the twilio client. The figures
go to bench/results/send.jsonl (bench/_results.py).
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench._results import figure, load_average, record

EMAILS, SMS = 10_000, 1_000
EMAIL_TARGET = 2_000.0


def _serve(kind: str, queue) -> None:
    """Child process: one sandbox, its URL sent back, then serve until terminated."""
    if kind == "postmark":
        from sandbox.postmark import PostmarkSandbox as Sandbox
    else:
        from sandbox.twilio import TwilioSandbox as Sandbox
    server = Sandbox().serve().start()
    queue.put(server.url)
    while True:
        time.sleep(3600)


def _start(kind: str):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(kind, queue), daemon=True)
    proc.start()
    return proc, queue.get(timeout=60)


def _plan(con, channel: str, template: str, count: int, now: datetime) -> None:
    from tasks.messages import ledger
    from tasks.messages.ledger import PlannedMessage, make_send_key

    ledger.insert_planned(
        con,
        [
            PlannedMessage(
                make_send_key("trigger", f"bench-{channel}", i, f"appointment:{i}"),
                "trigger",
                f"bench-{channel}",
                i,
                channel,
                "transactional",
                template,
                now,
                appointment_id=i,
            )  # fmt: skip
            for i in range(1, count + 1)
        ],
        now,
    )


def _prepare(row):
    from tasks.messages.prepare import Ready
    from tasks.messages.templates import build_context

    context = build_context(
        clinic={"name": "Bench Physio", "phone": "03 9000 0000", "website": "https://b.example",
                "address": "1 Bench St", "email": "hello@b.example"},
        first_name=f"Patient{row.patient_id}", preferred_first_name=None,
        appointment_starts_at=datetime(2026, 3, 2, 23, 0, tzinfo=UTC),
        time_zone="Australia/Melbourne", appointment_type="Follow-up",
        practitioner="Dr Bench", business="Richmond",
    )  # fmt: skip
    to = (
        f"p{row.patient_id}@example.com" if row.channel == "email" else f"+6141{row.patient_id:07d}"
    )
    return Ready(to=to, context=context)


def _run(kind: str, count: int, folder: Path) -> tuple[float, dict]:
    from sandbox.twilio import ACCOUNT_SID, AUTH_TOKEN
    from tasks.messages.dispatch import dispatch
    from tasks.messages.templates import Templates
    from tasks.providers.postmark import PostmarkProvider, PostmarkSettings
    from tasks.providers.twilio import TwilioProvider, TwilioSettings
    from tasks.warehouse import open_db

    proc, url = _start(kind)
    try:
        if kind == "postmark":
            channel, template = "email", "welcome"
            provider = PostmarkProvider(
                PostmarkSettings("sandbox-postmark-token", "Bench <b@b.example>", base_url=url)
            )
        else:
            channel, template = "sms", "reminder-24h"
            provider = TwilioProvider(
                TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, from_number="+61400000000", base_url=url)
            )
        now = datetime.now(UTC) - timedelta(minutes=1)
        with open_db(folder / f"{kind}.duckdb") as con:
            _plan(con, channel, template, count, now)
            started = time.perf_counter()
            result = dispatch(
                con, providers={channel: provider}, prepare=_prepare, templates=Templates()
            )
            elapsed = time.perf_counter() - started
        return elapsed, dict(result.counts)
    finally:
        proc.terminate()
        proc.join(timeout=10)


def main() -> None:
    load_at_start = load_average()
    figures: dict = {"emails": EMAILS, "sms": SMS}
    with tempfile.TemporaryDirectory(prefix="relay-bench-send-") as tmp:
        elapsed, counts = _run("postmark", EMAILS, Path(tmp))
        rate = counts.get("sent", 0) / elapsed
        ok = rate >= EMAIL_TARGET and counts.get("sent") == EMAILS
        print(
            f"email via sandbox Postmark batch API: {counts.get('sent', 0):,} sent in "
            f"{elapsed:.2f}s = {rate:,.0f} messages/s (target >= {EMAIL_TARGET:,.0f}) "
            f"{'OK' if ok else 'BELOW TARGET'}"
        )
        figures["email_per_second"] = figure(
            round(rate), f">= {EMAIL_TARGET:,.0f}, all {EMAILS:,} sent", ok=ok
        )
        figures["email_counts"] = counts
        elapsed, counts = _run("twilio", SMS, Path(tmp))
        rate = counts.get("sent", 0) / elapsed
        print(
            f"SMS via sandbox Twilio: {counts.get('sent', 0):,} sent in {elapsed:.2f}s = "
            f"{rate:,.0f} messages/s (target: report only; one HTTP request per SMS)"
        )
        figures["sms_per_second"] = figure(round(rate), "report only")
        figures["sms_counts"] = counts
    record("send", figures, load_at_start=load_at_start)


if __name__ == "__main__":
    main()
