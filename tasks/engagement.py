"""Email engagement: the opens and clicks Postmark tracked, pulled like bounces, and what each
template did per week (sent, delivered, bounced, unsubscribed, opened, clicked). Counts only.

Tracking is off unless the clinic switches it on (``providers.tracking`` in clinic.yaml: marketing
email only, sent as Postmark's ``TrackOpens``/``TrackLinks``) or the Postmark server's own
setting forces it. What came back is pulled each feedback step, per stream and kind, through
Postmark's Messages API (``GET /messages/outbound/opens`` and ``/clicks``): newest first, no
date filter, at most 10,000 deep, so a pull pages from the newest down to an hour before its cursor
(``tasks.feedback``: cursor, new_keys, advance) and records what is new in one transaction with
the cursor. Kept per event: the message id, the time and the first-open flag; never the recipient,
the link or the mail client.

Opens are a hint, not a fact: Apple Mail's privacy protection fetches every image (so the pixel)
whether or not the person reads the mail, some clients block images, and plain-text mail has no
pixel at all. Unique opens and clicks per message are what the reports count; the report says so.
"""

from __future__ import annotations

import html
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import duckdb

from tasks import feedback
from tasks.warehouse import transaction

Kind = Literal["open", "click"]
PAGE = 500  # Postmark's largest page
# Re-read this much before the cursor: the lists are by exact time (no whole-day filter to allow
# for), but an open may be listed a little after the moment it carries.
OVERLAP = timedelta(hours=1)
MAX_DEPTH = 10_000  # Postmark's count + offset limit
_PATHS = {"open": ("/messages/outbound/opens", "Opens"),
          "click": ("/messages/outbound/clicks", "Clicks")}  # fmt: skip

COLUMNS = ("sent", "delivered", "bounced", "unsubscribed", "opened", "clicked")
NOTE = (
    "Email only, for messages sent with tracking on (providers.tracking in clinic.yaml, or the "
    "Postmark server's own setting). Opened and clicked count each message once however often "
    "it was opened. Opens over-count and under-count: Apple Mail's privacy protection loads the "
    "tracking pixel of every message it receives, read or not; clients that block images and "
    "plain-text mail never register one. Clicks are the firmer signal. Delivered: email "
    "accepted and not bounced; SMS as the carrier reported. Unsubscribed: counted against the "
    "latest message the address got before it unsubscribed. The outbox tracks nothing: zeros."
)


# --- pulling ------------------------------------------------------------------------------------


def feed_name(kind: Kind, stream: str) -> str:
    return f"{kind}s:{stream}"


def read_events(client: Any, kind: Kind, stream: str, since: datetime) -> tuple[list[dict], bool]:
    """The events of one stream at or after ``since``, newest first, paged by offset; and
    whether Postmark's 10,000-deep limit stopped the reading before ``since`` was reached.

    Events arriving meanwhile push older ones down the list: a page may repeat a few (the keys
    drop them), never skip one.
    """
    path, key = _PATHS[kind]
    found: list[dict] = []
    offset = 0
    while True:
        count = min(PAGE, MAX_DEPTH - offset)
        if count <= 0:
            return found, True
        page = (
            client.call("GET", path, count=count, offset=offset, messagestream=stream).get(key)
            or []
        )
        times = [feedback.parse_time(e["ReceivedAt"]) for e in page]
        found.extend(e for e, at in zip(page, times, strict=True) if at >= since)
        if len(page) < count or any(at < since for at in times):
            return found, False
        offset += count


def event_key(kind: Kind, event: dict) -> str:
    """A digest: a click's link may carry a personal token (an unsubscribe link, say)."""
    return feedback.digest(
        kind, str(event["MessageID"]), str(event["ReceivedAt"]), str(event.get("OriginalLink", ""))
    )


def record_events(
    con: duckdb.DuckDBPyConnection,
    provider: str,
    kind: Kind,
    stream: str,
    events: list[dict],
    now: datetime,
    *,
    out_of_reach: bool = False,
) -> Counter:
    """New events into state.email_engagement, in one transaction with the feed's cursor."""
    feed = feed_name(kind, stream)
    keyed = {event_key(kind, e): e for e in events}
    fresh = feedback.new_keys(con, provider, feed, list(keyed))
    new = [(k, e) for k, e in keyed.items() if k in fresh]
    counts: Counter = Counter()
    with transaction(con):
        if new:
            con.execute(
                """
                INSERT INTO state.email_engagement
                SELECT unnest($keys::VARCHAR[]), $kind, unnest($ids::VARCHAR[]), $stream,
                       unnest($times::TIMESTAMPTZ[]), unnest($first::BOOLEAN[]), $now
                """,
                {"keys": [k for k, _ in new], "kind": kind,
                 "ids": [str(e["MessageID"]) for _, e in new], "stream": stream,
                 "times": [feedback.parse_time(e["ReceivedAt"]) for _, e in new],
                 "first": [e.get("FirstOpen") if kind == "open" else None for _, e in new],
                 "now": now},
            )  # fmt: skip
            feedback.record_items(
                con, provider, feed,
                [(k, kind, feedback.parse_time(e["ReceivedAt"])) for k, e in new], now,
            )  # fmt: skip
        newest = max((feedback.parse_time(e["ReceivedAt"]) for e in events), default=None)
        feedback.advance(con, provider, feed, newest, len(new), now)
    counts[f"{kind}s_{stream}"] += len(new)
    if out_of_reach:
        counts[f"{kind}s_{stream}_past_postmark_10000_limit"] += 1
    return +counts


def pull_postmark(
    con: duckdb.DuckDBPyConnection, client: Any, kind: Kind, stream: str, now: datetime
) -> Counter:
    """One stream's opens or clicks since an hour before the feed's cursor (45 days the first
    time, Postmark's default retention), recorded. A Postmark error records nothing and leaves
    the cursor (FeedbackUnavailable); the next pull reads the same again."""
    last = feedback.cursor(con, "postmark", feed_name(kind, stream))
    since = last - OVERLAP if last else now - timedelta(days=feedback.FIRST_PULL_DAYS)
    try:
        events, out_of_reach = read_events(client, kind, stream, since)
    except Exception as exc:  # the client's errors (ClientError, requests, bad JSON) alike
        code = f": {exc.error_code}" if hasattr(exc, "error_code") else ""
        raise feedback.FeedbackUnavailable(
            f"Postmark {kind}s of stream {stream!r} could not be read "
            f"({type(exc).__name__}{code}); nothing from it was recorded, the next pull tries "
            "again."
        ) from None
    return record_events(con, "postmark", kind, stream, events, now, out_of_reach=out_of_reach)


# --- per template, per week -----------------------------------------------------------------


def week_of(day: date, starts: int = 0) -> date:
    """The first day of ``day``'s week, weeks starting on weekday ``starts`` (0: Monday)."""
    return day - timedelta(days=(day.weekday() - starts) % 7)


def weekly_rows(
    con: duckdb.DuckDBPyConnection,
    time_zone: str,
    weeks: int = 8,
    now: datetime | None = None,
    week_starts: int = 0,
) -> list[dict]:
    """What each template did per week, over the last ``weeks`` clinic-local weeks up to the
    local day of ``now`` (that week included, nothing after that day): one dict per (template,
    channel, week) with ``template``, ``channel``, ``week`` (the week's first local day, a date:
    a Monday, or weekday ``week_starts``, as the owner's report's week) and the COLUMNS counts.
    Messages count in the week they were sent; their bounces, unsubscribes, opens and clicks
    count with them, whenever they came. Opened and clicked count messages (unique), not
    events. Rates are the renderer's."""
    now = now or datetime.now(ZoneInfo("UTC"))
    last_day = now.astimezone(ZoneInfo(time_zone)).date()
    first_week = week_of(last_day, week_starts) - timedelta(weeks=weeks - 1)
    rows = con.execute(
        """
        WITH sent AS (
            SELECT message_id, provider_message_id, template, channel, sent_at,
                   if(channel = 'email', lower(trim(to_address)), trim(to_address)) AS address,
                   CAST(timezone($tz, sent_at) AS DATE) AS day,
                   day - CAST((isodow(day) - 1 - $starts + 7) % 7 AS INTEGER) AS week
            FROM state.messages WHERE status = 'sent' AND sent_at IS NOT NULL
        ),
        bounced AS (
            SELECT DISTINCT bm.provider_message_id
            FROM state.email_bounce_messages bm JOIN state.email_bounces b USING (bounce_id)
            WHERE b.kind IN ('hard', 'soft')
        ),
        engaged AS (
            SELECT provider_message_id, bool_or(kind = 'open') AS opened,
                   bool_or(kind = 'click') AS clicked
            FROM state.email_engagement GROUP BY ALL
        ),
        unsubscribed AS (  -- each unsubscribe against the latest message before it
            SELECT DISTINCT arg_max(s.message_id, s.sent_at) AS message_id
            FROM state.suppressions u
            JOIN sent s ON s.channel = u.channel AND s.address = u.address
                       AND s.sent_at <= u.occurred_at
            WHERE u.action = 'suppress' AND u.reason IN ('unsubscribed', 'stop')
            GROUP BY u.channel, u.address, u.occurred_at
        )
        SELECT s.template, s.channel, s.week, count(*) AS sent,
               count(*) FILTER (WHERE CASE s.channel
                   WHEN 'email' THEN b.provider_message_id IS NULL
                   ELSE d.final AND d.status = 'delivered' END) AS delivered,
               count(b.provider_message_id) AS bounced,
               count(u.message_id) AS unsubscribed,
               count(*) FILTER (WHERE e.opened) AS opened,
               count(*) FILTER (WHERE e.clicked) AS clicked
        FROM sent s
        LEFT JOIN bounced b ON s.channel = 'email'
                           AND b.provider_message_id = s.provider_message_id
        LEFT JOIN state.sms_deliveries d ON d.message_id = s.message_id
        LEFT JOIN engaged e ON s.channel = 'email'
                           AND e.provider_message_id = s.provider_message_id
        LEFT JOIN unsubscribed u ON u.message_id = s.message_id
        WHERE s.week >= $first AND s.day <= $last
        GROUP BY ALL ORDER BY s.template, s.channel, s.week
        """,
        {"tz": time_zone, "first": first_week, "last": last_day, "starts": week_starts},
    ).fetchall()
    return [
        {"template": t, "channel": ch, "week": w, **dict(zip(COLUMNS, counts, strict=True))}
        for t, ch, w, *counts in rows
    ]


# --- a chart and a report section -----------------------------------------------------------

COLOURS = {"sent": "#90caf9", "opened": "#2e7d32", "clicked": "#f9a825"}


def svg_weekly(rows: list[dict], *, title: str, width: int = 860, height: int = 260) -> str:
    """Grouped weekly bars for email (all templates together): sent, opened, clicked; each
    bar's tooltip gives the numbers (the style of tasks/reports.py svg_bars)."""
    weeks = sorted({r["week"] for r in rows if r["channel"] == "email"})
    totals = {w: dict.fromkeys(COLOURS, 0) for w in weeks}
    for r in rows:
        if r["channel"] == "email":
            for k in COLOURS:
                totals[r["week"]][k] += r[k]
    pad_l, pad_r, pad_t, pad_b = 44, 12, 28, 40
    top = max([t["sent"] for t in totals.values()] + [1])
    scale = (height - pad_t - pad_b) / top
    base = height - pad_b
    slot = (width - pad_l - pad_r) / max(1, len(weeks))
    bar = max(1.0, slot * 0.8 / len(COLOURS))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}" font-family="system-ui,sans-serif" '
        'font-size="11">',
        f'<text x="{pad_l}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{base}" y2="{base}" stroke="#888"/>',
        f'<text x="{pad_l - 6}" y="{pad_t + 4}" text-anchor="end">{top}</text>',
    ]
    for i, week in enumerate(weeks):
        x0 = pad_l + i * slot + slot * 0.1
        for j, (name, colour) in enumerate(COLOURS.items()):
            n = totals[week][name]
            h = n * scale
            parts.append(
                f'<rect x="{x0 + j * bar:.1f}" y="{base - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>week of {week}: {n} {name}</title>'
                "</rect>"
            )
        parts.append(
            f'<text x="{x0 + bar * 1.5:.1f}" y="{base + 14}" text-anchor="middle">'
            f"{week.strftime('%d %b')}</text>"
        )
    legend_x = pad_l
    for name, colour in COLOURS.items():
        parts.append(
            f'<rect x="{legend_x}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{height - 5}">{name}</text>'
        )
        legend_x += 14 + 7 * len(name) + 16
    parts.append("</svg>")
    return "".join(parts)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def html_section(rows: list[dict]) -> str:
    """The report's section: the chart, a per-template table (rates of sent) and the note."""
    head = ["template", "channel", "week of", *COLUMNS, "open rate", "click rate"]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["template"], r["channel"], r["week"], *(r[k] for k in COLUMNS),
            _pct(r["opened"], r["sent"]) if r["channel"] == "email" else "-",
            _pct(r["clicked"], r["sent"]) if r["channel"] == "email" else "-",
        )) + "</tr>"
        for r in rows
    )  # fmt: skip
    table = (
        f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
        if rows
        else "<p class='empty'>No messages sent in these weeks.</p>"
    )
    chart = f"<figure>{svg_weekly(rows, title='Email per week: sent, opened, clicked')}</figure>"
    return (
        "<h2>Per template and week: delivered, bounced, unsubscribed, opened, clicked</h2>"
        + (chart if any(r["channel"] == "email" for r in rows) else "")
        + table
        + f"<p class='meta'>{html.escape(NOTE)}</p>"
    )
