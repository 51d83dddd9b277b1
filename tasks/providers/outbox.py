"""The local outbox: the default provider, no account needed. Messages become files to open.

Under ``data/outbox/<clinic>/``: per message ``<stem>.eml`` (open in a mail client) and
``<stem>.html`` for email, ``<stem>.txt`` for SMS, and ``<stem>.json`` (who, what, when), plus an
``index.html`` listing them all. The stem is derived from the send key, and the ``.json`` is
written last: once it exists the message counts as delivered, so a rerun finds it and writes no
second copy. These files hold personal data, like the database beside them: keep the data folder
private.
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

    def __init__(self, folder: Path, *, email_from: str, sms_from: str) -> None:
        self.folder = folder
        self.email_from = email_from
        self.sms_from = sms_from
        self.name = "outbox"
        self._wrote = False

    def send(self, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        outcomes = []
        for msg in messages:
            stem = stem_for(msg.send_key)
            if not (self.folder / f"{stem}.json").exists():
                sender = self.email_from if msg.channel == "email" else self.sms_from
                write_message_files(
                    self.folder, stem, msg.content, to=msg.to, sender=sender, send_key=msg.send_key
                )
                self._wrote = True
            outcomes.append(Outcome("sent", provider_message_id=f"outbox-{stem}"))
        return outcomes

    def reconcile(
        self, rows: Sequence[LedgerRow], now: datetime, settle: timedelta
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
            write_index(self.folder)
            self._wrote = False


def list_messages(folder: Path) -> list[dict]:
    """Every message in an outbox folder, newest first."""
    records = []
    for meta in folder.glob("*.json"):
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        record["stem"] = meta.stem
        records.append(record)
    records.sort(key=lambda r: r.get("written_at", ""), reverse=True)
    return records


def write_index(folder: Path) -> Path:
    """index.html: one row per message with links to its files."""
    rows = []
    for r in list_messages(folder):
        links = [f'<a href="{html.escape(r["file"])}">{html.escape(r["file"])}</a>']
        if r["channel"] == "email":
            links.insert(0, f'<a href="{html.escape(r["stem"])}.html">view</a>')
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (r["written_at"][:19].replace("T", " "), r["channel"], r["to"], r["title"])
            )
            + f"<td>{' '.join(links)}</td></tr>"
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>Outbox</title>"
        "<style>body{font-family:sans-serif}td{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h1>Outbox: {len(rows)} messages</h1><table><tr><th>Written (UTC)</th><th>Channel</th>"
        "<th>To</th><th>Subject / text</th><th>Files</th></tr>" + "\n".join(rows) + "</table>"
    )
    index = folder / "index.html"
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(index, page)
    return index
