"""The local outbox: the default provider, no account needed. Messages become files to open.

Under ``data/outbox/<clinic>/``: per message ``<stem>.eml`` (open in a mail client) and
``<stem>.html`` for email, ``<stem>.txt`` for SMS, and ``<stem>.json`` (who, what, when), plus an
``index.html`` listing them all: when each was written (in the clinic's time zone), which trigger,
journey or campaign sent it, and which run the folder holds (``start_run``: the demo starts each
run with an empty outbox and says so at the top). The stem is derived from the send key, and the
``.json`` is written last: once it exists the message counts as delivered, so a rerun finds it and
writes no second copy. These files hold personal data, like the database beside them: keep the
data folder private; the index shows no more of it than the files (the recipient).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from zoneinfo import ZoneInfo

from tasks.feedback import Feed
from tasks.messages.ledger import LedgerRow
from tasks.paths import data_dir
from tasks.providers.common import Outcome, OutgoingMessage, Rendered, RenderedEmail

# Headers as a mail client reads them: the default policy folds at 78 characters and turns a
# header with a word longer than that (List-Unsubscribe's signed URL) into RFC 2047 encoded
# words, which no client takes for a URL. RFC 5322 allows lines of 998, so nothing is encoded.
_EML_POLICY = policy.default.clone(max_line_length=998)


def outbox_dir(clinic: str) -> Path:
    return data_dir() / "outbox" / clinic


RUN_FILE = "run.json"
_MESSAGE_SUFFIXES = (".json", ".eml", ".html", ".txt")


def source_of(send_key: str) -> tuple[str, str]:
    """(kind, name) of the trigger, journey or campaign that sent a message: the first two parts
    of its send key (``tasks.messages.ledger.make_send_key``: ``kind:name:patient:occasion``)."""
    kind, name, *_ = [*send_key.split(":", 2), "", ""]
    return (kind, name) if kind in ("trigger", "journey", "campaign") else ("", "")


def start_run(
    folder: Path, label: str, now: datetime | None = None, time_zone: str = "UTC"
) -> None:
    """Empty the outbox for a new run and say which run it holds (``run.json``, shown by the
    index). For a folder whose database starts afresh (the demo): a message of an earlier run
    would otherwise mix in, and its ``.json`` would stand for a new message with the same key."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file() and (path.suffix in _MESSAGE_SUFFIXES or path.name == "index.html"):
            path.unlink()
    started = (now or datetime.now(UTC)).isoformat()
    _atomic_write(folder / RUN_FILE, json.dumps({"label": label, "started_at": started}))
    write_index(folder, time_zone=time_zone)


def read_run(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stem_for(send_key: str) -> str:
    return hashlib.sha256(send_key.encode("utf-8")).hexdigest()[:24]


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_message_files(
    folder: Path,
    stem: str,
    content: Rendered,
    *,
    to: str,
    sender: str,
    send_key: str,
    headers: dict[str, str] | None = None,
    source: str = "",
) -> Path:
    """Write one message as files a person can open; returns the main file (.eml or .txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    if isinstance(content, RenderedEmail):
        mail = EmailMessage()
        mail["From"] = sender
        mail["To"] = to
        mail["Subject"] = content.subject
        mail["Date"] = format_datetime(now)
        mail["Message-ID"] = make_msgid(idstring=stem, domain="outbox.clinic-relay")
        mail["X-Relay-Send-Key"] = send_key
        for name, value in {**content.headers, **(headers or {})}.items():
            mail[name] = value
        mail.set_content(content.text)
        mail.add_alternative(content.html, subtype="html")
        _atomic_write(folder / f"{stem}.html", content.html)
        main = folder / f"{stem}.eml"
        _atomic_write(main, mail.as_bytes(policy=_EML_POLICY))
        title = content.subject
    else:
        main = folder / f"{stem}.txt"
        _atomic_write(main, f"From: {sender}\nTo: {to}\n\n{content.text}\n")
        title = content.text[:80]
    record = {
        "send_key": send_key,
        "to": to,
        "title": title,
        "channel": "email" if isinstance(content, RenderedEmail) else "sms",
        "source": source,
        "file": main.name,
        "written_at": now.isoformat(),
    }
    _atomic_write(folder / f"{stem}.json", json.dumps(record))
    return main


class OutboxProvider:
    """Delivers by writing files; idempotent per send key."""

    batch_size = 500
    # one claim for the batch: the files are the truth on reconcile, so none is left in doubt
    request_size = 500

    def __init__(
        self,
        folder: Path,
        *,
        email_from: str,
        sms_from: str,
        time_zone: str = "UTC",
        reply_to: str | None = None,
    ) -> None:
        self.folder = folder
        self.time_zone = time_zone  # the index shows times in the clinic's zone
        self.email_from = email_from
        self.reply_to = reply_to  # the clinic's providers.sender.reply_to: a patient's reply
        self.sms_from = sms_from
        self.name = "outbox"
        self._wrote = False

    def send(self, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        outcomes = []
        for msg in messages:
            stem = stem_for(msg.send_key)
            if not (self.folder / f"{stem}.json").exists():
                sender = self.email_from if msg.channel == "email" else self.sms_from
                kind, _ = source_of(msg.send_key)
                reply = {"Reply-To": self.reply_to} if self.reply_to else {}
                write_message_files(
                    self.folder, stem, msg.content, to=msg.to, sender=sender,
                    send_key=msg.send_key, source=f"{kind} {msg.tag}".strip(), headers=reply,
                )  # fmt: skip
                self._wrote = True
            outcomes.append(Outcome("sent", provider_message_id=f"outbox-{stem}"))
        return outcomes

    def reconcile(
        self, rows: Sequence[LedgerRow], now: datetime, settle: timedelta, taken: object = ()
    ) -> list[Outcome]:
        # The outbox is ours and writing is idempotent: the file is the truth.
        outcomes = []
        for row in rows:
            stem = stem_for(row.send_key)
            if (self.folder / f"{stem}.json").exists():
                outcomes.append(Outcome("sent", provider_message_id=f"outbox-{stem}"))
            else:
                outcomes.append(Outcome("retry", reason="not in the outbox: the run stopped first"))
        return outcomes

    def managed_unsubscribe(self) -> None:
        return None  # our link and headers, in the files

    def feedback_feeds(self, soft_bounce_limit: int) -> list[Feed]:
        return []  # nothing comes back from files

    def close(self) -> None:
        if self._wrote:
            write_index(self.folder, time_zone=self.time_zone)
            self._wrote = False


def list_messages(folder: Path) -> list[dict]:
    """Every message in an outbox folder, newest first."""
    records = []
    for meta in folder.glob("*.json"):
        if meta.name == RUN_FILE:
            continue
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        record["stem"] = meta.stem
        if not record.get("source"):  # written before the source was recorded
            kind, name = source_of(record.get("send_key", ""))
            record["source"] = f"{kind} {name}".strip()
        records.append(record)
    records.sort(key=lambda r: r.get("written_at", ""), reverse=True)
    return records


def local_time(written_at: str, time_zone: str) -> str:
    """A record's ``written_at`` (UTC, ISO) as ``YYYY-MM-DD HH:MM:SS`` in the clinic's zone."""
    try:
        at = datetime.fromisoformat(written_at)
    except ValueError:
        return written_at
    return at.astimezone(ZoneInfo(time_zone)).strftime("%Y-%m-%d %H:%M:%S")


def write_index(folder: Path, time_zone: str = "UTC") -> Path:
    """index.html: the run it holds, then one row per message with links to its files."""
    rows = []
    for r in list_messages(folder):
        links = [f'<a href="{html.escape(r["file"])}">{html.escape(r["file"])}</a>']
        if r["channel"] == "email":
            links.insert(0, f'<a href="{html.escape(r["stem"])}.html">view</a>')
        cells = (
            local_time(r["written_at"], time_zone),
            r["source"],
            r["channel"],
            r["to"],
            r["title"],
        )
        rows.append(
            "<tr>"
            + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells)
            + f"<td>{' '.join(links)}</td></tr>"
        )
    run = read_run(folder)
    run_line = (
        f"<p>Run: {html.escape(run['label'])}, started "
        f"{html.escape(local_time(run['started_at'], time_zone))} ({html.escape(time_zone)}). "
        "Earlier runs' messages are not here.</p>"
        if run
        else ""
    )
    page = (
        "<!doctype html><meta charset='utf-8'><title>Outbox</title>"
        "<style>body{font-family:sans-serif}td{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h1>Outbox: {len(rows)} message{'' if len(rows) == 1 else 's'}</h1>{run_line}<table><tr>"
        f"<th>Written ({html.escape(time_zone)})</th><th>Sent by</th><th>Channel</th>"
        "<th>To</th><th>Subject / text</th><th>Files</th></tr>" + "\n".join(rows) + "</table>"
    )
    index = folder / "index.html"
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(index, page)
    return index
