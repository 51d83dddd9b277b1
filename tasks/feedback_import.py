"""Importing an unsubscribe list (a CSV export, e.g. Mailchimp's): every address in its email
column is suppressed for marketing (source ``csv_import``, evidence the file and line) through
the feedback recorder (tasks/feedback.py). Run by ``relay import-unsubscribes``.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from email_validator import EmailNotValidError, validate_email

from tasks.errors import UserFacingError
from tasks.feedback import Book
from tasks.warehouse import transaction

# Header names exports use for the address (Mailchimp: "Email Address"), compared loosely.
EMAIL_HEADERS = ("emailaddress", "email", "e-mail", "e-mailaddress", "mail", "emailaddr")


class ImportRefused(UserFacingError):
    """The CSV cannot be imported as it is; nothing was recorded."""


@dataclass
class ImportResult:
    imported: int = 0
    already: int = 0  # already unsubscribed here
    duplicate: int = 0  # repeated in the file
    invalid: int = 0
    invalid_lines: list[int] = field(default_factory=list)
    column: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "already_unsubscribed": self.already,
                "duplicate": self.duplicate, "invalid": self.invalid}  # fmt: skip


def _email_column(header: list[str]) -> int | None:
    loose = [re.sub(r"[\s_]+", "", h.strip().lower()) for h in header]
    for name in EMAIL_HEADERS:
        if name in loose:
            return loose.index(name)
    return None


def import_unsubscribes(
    con: duckdb.DuckDBPyConnection, path: Path, now: datetime, *, skip_invalid: bool = False
) -> ImportResult:
    """Suppress (marketing, source csv_import) every address in the file's email column.

    All or nothing: any invalid address refuses the whole file (with its line numbers) unless
    ``skip_invalid``; the rows go in one transaction.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file.") from None
    except UnicodeDecodeError:
        raise ImportRefused(f"{path}: not UTF-8 text; export the list as CSV (UTF-8).") from None
    except OSError as exc:  # a folder, no permission...
        raise ImportRefused(
            f"{path}: cannot be read ({exc.strerror}); give the CSV file."
        ) from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    # (first line in the file, cells): a quoted cell may hold line breaks (a Mailchimp note), so
    # a record's number is not its line's; the file is read as csv reads files (newline="")
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    rows, lines, line = [], [], 1
    for record in reader:
        rows.append(record)
        lines.append(line)
        line = reader.line_num + 1
    if not rows:
        raise ImportRefused(f"{path}: the file is empty.")
    column = _email_column(rows[0])
    if column is None:
        # a first line holding an address is data, not a header: never echo it
        shown = "" if any("@" in cell for cell in rows[0]) else f" ({', '.join(rows[0][:8])})"
        raise ImportRefused(
            f"{path}: no email column in the first line{shown}. Start the file with a header "
            "line naming the column 'Email Address' or 'email' (as Mailchimp exports do)."
        )
    result = ImportResult(column=rows[0][column].strip())
    seen: set[str] = set()
    valid: list[tuple[int, str]] = []
    for line, row in zip(lines[1:], rows[1:], strict=True):
        raw = row[column].strip() if column < len(row) else ""
        if not raw and not any(cell.strip() for cell in row):
            continue  # a blank line
        try:
            email = validate_email(raw, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            result.invalid += 1
            result.invalid_lines.append(line)
            continue
        if email in seen:
            result.duplicate += 1
            continue
        seen.add(email)
        valid.append((line, email))
    if result.invalid and not skip_invalid:
        shown = ", ".join(str(n) for n in result.invalid_lines[:20])
        more = "..." if len(result.invalid_lines) > 20 else ""
        raise ImportRefused(
            f"{path}: {result.invalid} invalid address(es) in column '{result.column}' on "
            f"line(s) {shown}{more}. Nothing was imported. Fix or remove those lines, or import "
            "the valid ones with --skip-invalid."
        )
    with transaction(con):
        book = Book(con, "email", {email for _, email in valid})
        for line, email in valid:
            if book.suppress(email, "marketing", "unsubscribed", "csv_import",
                             f"{path.name} line {line}", now):  # fmt: skip
                result.imported += 1
            else:
                result.already += 1
        book.write(con)
    return result
