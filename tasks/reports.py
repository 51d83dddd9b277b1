"""Reports: what went out, what came back, how the lists grew. Counts only, never a person.

Read from the ledger (state.messages), the bounces feedback recorded (state.email_bounces and
state.email_bounce_messages), what became of each SMS Twilio accepted (state.sms_deliveries:
delivered vs sent per source), suppressions, and the membership history the model runner writes
(state.membership_events, state.audience_members). Days are the clinic's local days.

Two outputs: table rows for Prefect artifacts (each tick), and one self-contained HTML file with
inline SVG charts that a person opens in a browser (``relay report``).
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb

from tasks import engagement
from tasks.messages.channels import MARKETING_LISTS

# Ledger statuses in the order reports show them; "sent" is what the provider accepted.
OUTCOMES = ("sent", "bounced", "failed", "skipped", "cancelled", "unknown", "sending", "planned")
COLOURS = {"sent": "#2e7d32", "bounced": "#ad1457", "failed": "#c62828", "skipped": "#f9a825",
           "cancelled": "#9e9e9e", "unknown": "#6a1b9a", "sending": "#1565c0",
           "planned": "#90caf9", "joined": "#2e7d32", "left": "#c62828"}  # fmt: skip

# What became of the SMS a provider accepted ("sent"), per source. "no_receipt": no final word
# yet (or ever: some carriers send no receipt).
DELIVERY = ("sent", "delivered", "undelivered", "failed", "no_receipt")

# When each status happened: a message is counted on the day of its latest move.
_MOMENT = """coalesce(CASE status WHEN 'sent' THEN sent_at WHEN 'failed' THEN failed_at
    WHEN 'skipped' THEN skipped_at WHEN 'cancelled' THEN cancelled_at
    WHEN 'unknown' THEN unknown_at WHEN 'sending' THEN sending_at END, due_at)"""


@dataclass
class Report:
    clinic: str
    time_zone: str
    first_day: date
    last_day: date
    # (day, source_kind, source_name, outcome) -> count; "bounced" counts bounces of sent mail
    messages: dict[tuple[date, str, str, str], int] = field(default_factory=dict)
    # (source_kind, source_name, status, reason) -> count, for skipped / failed / cancelled / unknown
    reasons: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # (day, audience, "joined" | "left") -> count; members an audience started with are not joins
    lists: dict[tuple[date, str, str], int] = field(default_factory=dict)
    list_sizes: dict[str, int] = field(default_factory=dict)
    # (day, channel, action, reason, source) -> count
    suppressions: dict[tuple[date, str, str, str, str], int] = field(default_factory=dict)
    # (source_kind, source_name) -> DELIVERY counts, for SMS accepted in the period
    deliveries: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # per template and week: tasks/engagement.py weekly_rows
    engagement: list[dict] = field(default_factory=list)

    @property
    def days(self) -> list[date]:
        return [
            self.first_day + timedelta(days=i)
            for i in range((self.last_day - self.first_day).days + 1)
        ]

    def totals_by_source(self) -> dict[tuple[str, str], dict[str, int]]:
        totals: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(OUTCOMES, 0)
        )
        for (_, kind, name, outcome), n in self.messages.items():
            totals[(kind, name)][outcome] += n
        return dict(sorted(totals.items()))

    def per_day(self) -> dict[date, dict[str, int]]:
        out = {d: dict.fromkeys(OUTCOMES, 0) for d in self.days}
        for (day, _, _, outcome), n in self.messages.items():
            if day in out:
                out[day][outcome] += n
        return out


def build_report(
    con: duckdb.DuckDBPyConnection,
    clinic: str,
    time_zone: str,
    days: int,
    now: datetime,
    week_starts: int = 0,
) -> Report:
    """The last ``days`` local days up to and including today (in ``time_zone``); engagement
    per week, weeks starting on weekday ``week_starts`` (0: Monday; the owner's report: its own
    week's first day, so the week's table counts that week's messages and no others)."""
    if days < 1:
        raise ValueError("a report covers at least one day")
    last_day = now.astimezone(ZoneInfo(time_zone)).date()
    first_day = last_day - timedelta(days=days - 1)
    report = Report(clinic, time_zone, first_day, last_day)
    window = {"tz": time_zone, "first": first_day, "last": last_day}
    local_day = "CAST(timezone($tz, {}) AS DATE)"

    for day, kind, name, status, n in con.execute(
        f"""
        SELECT {local_day.format(_MOMENT)} AS day, source_kind, source_name, status, count(*)
        FROM state.messages WHERE day BETWEEN $first AND $last GROUP BY ALL
        """,
        window,
    ).fetchall():
        report.messages[(day, kind, name, status)] = n

    for day, kind, name, n in con.execute(
        f"""
        SELECT {local_day.format("b.bounced_at")} AS day, m.source_kind, m.source_name, count(*)
        FROM state.email_bounces b
        JOIN state.email_bounce_messages bm USING (bounce_id)
        JOIN state.messages m ON m.provider_message_id = bm.provider_message_id
        WHERE b.kind IN ('hard', 'soft') AND day BETWEEN $first AND $last
        GROUP BY ALL
        """,
        window,
    ).fetchall():
        report.messages[(day, kind, name, "bounced")] = n

    for kind, name, status, reason, n in con.execute(
        f"""
        SELECT source_kind, source_name, status, coalesce(status_reason, '(none given)'), count(*)
        FROM state.messages
        WHERE status IN ('skipped', 'failed', 'cancelled', 'unknown')
          AND {local_day.format(_MOMENT)} BETWEEN $first AND $last
        GROUP BY ALL ORDER BY 5 DESC
        """,
        window,
    ).fetchall():
        report.reasons[(kind, name, status, reason)] = n

    for day, audience, event, n in con.execute(
        f"""
        SELECT {local_day.format("occurred_at")} AS day, audience, event, count(*)
        FROM state.membership_events
        WHERE NOT initial AND day BETWEEN $first AND $last GROUP BY ALL
        """,
        window,
    ).fetchall():
        report.lists[(day, audience, event)] = n
    report.list_sizes = dict(
        con.execute(
            "SELECT a.audience, count(m.member_key) FROM state.audiences a "
            "LEFT JOIN state.audience_members m USING (audience) WHERE a.retired_at IS NULL "
            "GROUP BY ALL ORDER BY 1"
        ).fetchall()
    )

    for day, channel, action, reason, source, n in con.execute(
        f"""
        SELECT {local_day.format("occurred_at")} AS day, channel, action, reason, source, count(*)
        FROM state.suppressions WHERE day BETWEEN $first AND $last GROUP BY ALL
        """,
        window,
    ).fetchall():
        report.suppressions[(day, channel, action, reason, source)] = n

    for kind, name, *counts in con.execute(
        f"""
        SELECT m.source_kind, m.source_name, count(*),
               count(*) FILTER (WHERE d.final AND d.status = 'delivered'),
               count(*) FILTER (WHERE d.final AND d.status = 'undelivered'),
               count(*) FILTER (WHERE d.final AND d.status = 'failed')
        FROM state.messages m LEFT JOIN state.sms_deliveries d USING (message_id)
        WHERE m.channel = 'sms' AND m.status = 'sent' AND m.provider = 'twilio'
          AND {local_day.format("m.sent_at")} BETWEEN $first AND $last
        GROUP BY ALL ORDER BY 1, 2
        """,
        window,
    ).fetchall():
        sent, delivered, undelivered, failed = counts
        report.deliveries[(kind, name)] = {
            "sent": sent, "delivered": delivered, "undelivered": undelivered, "failed": failed,
            "no_receipt": sent - delivered - undelivered - failed,
        }  # fmt: skip
    report.engagement = engagement.weekly_rows(con, time_zone, -(-days // 7), now, week_starts)
    return report


# --- table rows (Prefect artifacts) -------------------------------------------------------------


def message_rows(report: Report) -> list[dict]:
    """One row per day and source: what the artifact table shows."""
    rows: dict[tuple[date, str, str], dict] = {}
    for (day, kind, name, outcome), n in sorted(report.messages.items()):
        row = rows.setdefault(
            (day, kind, name),
            {"day": day.isoformat(), "source": f"{kind}:{name}", **dict.fromkeys(OUTCOMES, 0)},
        )
        row[outcome] += n
    return list(rows.values())


def list_rows(report: Report) -> list[dict]:
    rows: dict[tuple[date, str], dict] = {}
    for (day, audience, event), n in sorted(report.lists.items()):
        row = rows.setdefault(
            (day, audience), {"day": day.isoformat(), "audience": audience, "joined": 0, "left": 0}
        )
        row[event] += n
    return list(rows.values())


def delivery_rows(report: Report) -> list[dict]:
    """Delivered vs sent (accepted by Twilio) per source, SMS only."""
    return [
        {"source": f"{kind}:{name}", **counts,
         "delivered_pct": round(100 * counts["delivered"] / counts["sent"], 1)}
        for (kind, name), counts in sorted(report.deliveries.items())
    ]  # fmt: skip


def suppression_rows(report: Report) -> list[dict]:
    return [
        {"day": day.isoformat(), "channel": channel, "action": action, "reason": reason,
         "source": source, "count": n}
        for (day, channel, action, reason, source), n in sorted(report.suppressions.items())
    ]  # fmt: skip


# --- HTML -------------------------------------------------------------------------------------


def svg_bars(
    days: list[date],
    series: dict[str, list[int]],
    *,
    below: frozenset[str] = frozenset(),
    title: str,
    width: int = 860,
    height: int = 240,
) -> str:
    """Stacked daily bars; series named in ``below`` grow downwards (e.g. people who left)."""
    pad_l, pad_r, pad_t, pad_b = 44, 12, 28, 36
    up = [sum(v[i] for k, v in series.items() if k not in below) for i in range(len(days))]
    down = [sum(v[i] for k, v in series.items() if k in below) for i in range(len(days))]
    top, bottom = max(up + [1]), max(down + [0])
    plot_h = height - pad_t - pad_b
    scale = plot_h / (top + bottom)
    zero = pad_t + top * scale
    slot = (width - pad_l - pad_r) / max(1, len(days))
    bar = max(1.0, slot * 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}" font-family="system-ui,sans-serif" '
        'font-size="11">',
        f'<text x="{pad_l}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#888"/>',
        f'<text x="{pad_l - 6}" y="{pad_t + 4}" text-anchor="end">{top}</text>',
    ]
    if bottom:
        parts.append(
            f'<text x="{pad_l - 6}" y="{height - pad_b}" text-anchor="end">-{bottom}</text>'
        )
    for i, day in enumerate(days):
        x = pad_l + i * slot + (slot - bar) / 2
        y_up, y_down = zero, zero
        for name, values in series.items():
            n = values[i]
            if not n:
                continue
            h = n * scale
            if name in below:
                y, y_down = y_down, y_down + h
            else:
                y_up -= h
                y = y_up
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(name, "#555")}"><title>{day}: {n} {html.escape(name)}'
                "</title></rect>"
            )
        if len(days) <= 16 or i % max(1, len(days) // 10) == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - pad_b + 14}" '
                f'text-anchor="middle">{day.strftime("%d %b")}</text>'
            )
    legend_x = pad_l
    for name in series:
        parts.append(
            f'<rect x="{legend_x}" y="{height - 14}" width="10" height="10" '
            f'fill="{COLOURS.get(name, "#555")}"/><text x="{legend_x + 14}" y="{height - 5}">'
            f"{html.escape(name)}</text>"
        )
        legend_x += 14 + 7 * len(name) + 16
    parts.append("</svg>")
    return "".join(parts)


def html_table(header: list[str], rows: list[list], empty: str) -> str:
    """A table of counts, or ``empty`` in words when there are no rows."""
    if not rows:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_sections(report: Report) -> list[str]:
    """The charts and tables of a report, as HTML fragments (``render_html`` and the owner's
    weekly email put their own heading above them)."""
    days = report.days
    per_day = report.per_day()
    charts = [
        svg_bars(
            days,
            {o: [per_day[d][o] for d in days] for o in ("sent", "failed", "skipped", "unknown")},
            title="Messages per day (by outcome)",
        ),
        svg_bars(
            days,
            {"bounced": [per_day[d]["bounced"] for d in days]},
            title="Bounces of sent email per day",
            height=160,
        ),  # fmt: skip
    ]
    for audience in (m.audience for m in MARKETING_LISTS.values()):
        if audience not in report.list_sizes:
            continue
        charts.append(
            svg_bars(
                days,
                {
                    e: [report.lists.get((d, audience, e), 0) for d in days]
                    for e in ("joined", "left")
                },
                below=frozenset({"left"}),
                title=f"{audience.replace('_', ' ')}: joined and left per day "
                f"(now {report.list_sizes[audience]})",
            )
        )

    totals = report.totals_by_source()
    source_rows = [[f"{k}:{n}", *(t[o] for o in OUTCOMES)] for (k, n), t in totals.items()]
    daily_rows = [[r["day"], r["source"], *(r[o] for o in OUTCOMES)] for r in message_rows(report)]
    reason_rows = [[f"{k}:{n}", s, r, c] for (k, n, s, r), c in report.reasons.items()]
    delivery_table = [
        [r["source"], *(r[o] for o in DELIVERY), f"{r['delivered_pct']}%"]
        for r in delivery_rows(report)
    ]
    growth: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (_, audience, event), n in report.lists.items():
        growth[audience][0 if event == "joined" else 1] += n
    list_table = [
        [a, size, growth[a][0], growth[a][1], growth[a][0] - growth[a][1]]
        for a, size in report.list_sizes.items()
    ]
    supp_rows = [
        [r["day"], r["channel"], r["action"], r["reason"], r["source"], r["count"]]
        for r in suppression_rows(report)
    ]
    return [
        *(f"<figure>{c}</figure>" for c in charts),
        "<h2>Per trigger, journey and campaign</h2>",
        html_table(["source", *OUTCOMES], source_rows, "No messages in this period."),
        "<h2>SMS: delivered vs sent</h2>",
        "<p class='meta'>Sent: accepted by Twilio. Delivered, undelivered, failed: what the "
        "carrier reported afterwards; no receipt: nothing final (yet).</p>",
        html_table(
            ["source", *DELIVERY, "delivered"],
            delivery_table,
            "No SMS sent through Twilio in this period (the outbox has no delivery reports).",
        ),
        engagement.html_section(report.engagement),
        "<h2>Why messages were skipped, failed or cancelled</h2>",
        html_table(["source", "status", "reason", "messages"], reason_rows, "None."),
        "<h2>Lists and segments: growth and churn</h2>",
        html_table(
            ["audience", "size now", "joined", "left", "net"],
            list_table,
            "No membership history yet (the models have not been built).",
        ),  # fmt: skip
        "<h2>Suppressions and opt-ins</h2>",
        html_table(["day", "channel", "action", "reason", "source", "count"], supp_rows, "None."),
        "<h2>Per day</h2>",
        html_table(["day", "source", *OUTCOMES], daily_rows, "No messages in this period."),
    ]


def render_html(report: Report, clinic_name: str, generated_at: datetime) -> str:
    period = f"{report.first_day} to {report.last_day} ({report.time_zone})"
    return page(
        f"{clinic_name}: messaging report",
        [
            f"<h1>{html.escape(clinic_name)}: messaging report</h1>",
            f"<p class='meta'>{html.escape(period)}; generated {generated_at:%Y-%m-%d %H:%M} UTC. "
            f"{COUNTING}</p>",
            *report_sections(report),
        ],
    )


COUNTING = (
    "Counts only. A message is counted on the day of its latest status; bounces on the day "
    "they came back."
)


def page(title: str, sections: list[str]) -> str:
    """One self-contained HTML page (styles inline, charts as inline SVG): a browser or a mail
    client shows it without fetching anything."""
    style = (
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:960px}"
        "table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #ddd;"
        "padding:.25rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}"
        "th{background:#f5f5f5}.meta,.empty{color:#666}figure{margin:1rem 0}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>" + "".join(sections) + "</body></html>\n"
    )
