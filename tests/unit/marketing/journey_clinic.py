"""A hand-made clinic for the journey, campaign and marketing-gate tests: raw rows written the way
the sync writes them, the real SQL models built at a clock the test advances, then the real
journey engine, campaigns and dispatch (through the local outbox) on top."""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from tasks.config import ClinicConfig
from tasks.marketing import campaigns, journeys
from tasks.messages import ledger
from tasks.messages.dispatch import dispatch
from tasks.messages.gate import Gate
from tasks.messages.prepare import by_source_kind
from tasks.messages.templates import Templates
from tasks.models import runner as models
from tasks.providers.outbox import OutboxProvider
from tasks.warehouse import RAW_COLUMNS, memory_db

API = "https://api.au1.cliniko.com/v1"
START = datetime(2026, 11, 2, 22, 0, tzinfo=UTC)  # Tuesday 09:00 in Melbourne (AEDT)
KEY = b"journey-tests-unsubscribe-key"


# Folders this module makes live until the test process exits, then go (TemporaryDirectory's
# finalizer), instead of piling up in the system's temp folder run after run.
_FOLDERS: list[tempfile.TemporaryDirectory] = []


def _folder(prefix: str) -> Path:
    _FOLDERS.append(tempfile.TemporaryDirectory(prefix=prefix))
    return Path(_FOLDERS[-1].name)


# The segments these tests use: building only them (with every staging and mart model they read)
# takes a fifth of the time of the whole project.
SEGMENTS = ("new_patients", "recall_90_179", "upcoming_appointment")


@cache
def sql_dir() -> Path:
    """The project's staging and marts models and the segments above, copied unchanged."""
    folder = _folder("journey-sql-")
    for layer in ("staging", "marts"):
        shutil.copytree(models.SQL_DIR / layer, folder / layer)
    (folder / "segments").mkdir()
    for name in SEGMENTS:
        shutil.copy(models.SQL_DIR / "segments" / f"{name}.sql", folder / "segments")
    return folder


def no_triggers(row):
    raise AssertionError(f"no trigger rows in these tests (got message {row.message_id})")


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _link(resource: str, id_: int) -> dict:
    return {"links": {"self": f"{API}/{resource}/{id_}"}}


class Clinic:
    """raw.* by hand, models built at ``now``; ``advance`` moves the clock."""

    def __init__(self, con=None, *, time_zone: str = "Australia/Melbourne", **config):
        self.con = con if con is not None else memory_db()
        self.now = START
        self.time_zone = time_zone
        self.outbox = _folder("journey-outbox-")
        self.config = config
        self._next_appointment = 1000
        self.payloads: dict[tuple[str, int], dict] = {}
        self._written = START - timedelta(days=1)
        self._write("appointment_types", 1, {"id": "1", "name": "Consult", "category": "Physio"})
        self._write(
            "businesses",
            1,
            {"id": "1", "business_name": "Main St", "country_code": "AU",
             "time_zone_identifier": time_zone},
        )  # fmt: skip

    def cfg(self, **overrides) -> ClinicConfig:
        values = {"clinic": "test", "name": "Test Physio", "time_zone": self.time_zone,
                  **self.config, **overrides}  # fmt: skip
        return ClinicConfig(**values)

    def _write(self, table: str, id_: int, payload: dict) -> None:
        self.payloads[(table, id_)] = payload
        # each write later than the last, as successive syncs stamp them: the models' incremental
        # staging reads what was written after the previous build
        self._written = max(self.now, self._written + timedelta(milliseconds=1))
        self.con.execute(
            f"INSERT OR REPLACE INTO raw.{table} {RAW_COLUMNS} VALUES (?, NULL, ?, ?, NULL)",
            [id_, json.dumps(payload), self._written],
        )

    def patient(self, id_: int, *, email: str | None = "", mobile: str | None = None,
                sms_opt_in: bool | None = None, born: str = "1980-05-26",
                archived: bool = False) -> int:  # fmt: skip
        phones = [{"phone_type": "Mobile", "number": mobile}] if mobile else []
        self._write(
            "patients",
            id_,
            {"id": str(id_), "first_name": f"Name{id_}",
             "email": f"patient{id_}@example.com" if email == "" else email,
             "created_at": _ts(START - timedelta(days=400)),
             "archived_at": _ts(self.now) if archived else "",
             "accepted_sms_marketing": sms_opt_in, "patient_phone_numbers": phones,
             "date_of_birth": born},
        )  # fmt: skip
        return id_

    def appointment(self, patient_id: int, starts: datetime, *, arrived: bool) -> int:
        self._next_appointment += 1
        id_ = self._next_appointment
        self._write(
            "individual_appointments",
            id_,
            {"id": id_, "starts_at": _ts(starts), "ends_at": _ts(starts + timedelta(minutes=30)),
             "cancelled_at": None, "did_not_arrive": False, "patient_arrived": arrived,
             "archived_at": "", "patient": _link("patients", patient_id),
             "appointment_type": _link("appointment_types", 1),
             "business": _link("businesses", 1), "practitioner": _link("practitioners", 7)},
        )  # fmt: skip
        return id_

    def visit(self, patient_id: int, days_ago: float) -> int:
        return self.appointment(patient_id, self.now - timedelta(days=days_ago), arrived=True)

    def book(self, patient_id: int, days_ahead: float) -> int:
        return self.appointment(patient_id, self.now + timedelta(days=days_ahead), arrived=False)

    def cancel(self, appointment_id: int) -> None:
        payload = self.payloads[("individual_appointments", appointment_id)]
        self._write("individual_appointments", appointment_id,
                    {**payload, "cancelled_at": _ts(self.now)})  # fmt: skip

    def unsubscribe(self, email: str) -> None:
        self.con.execute(
            "INSERT INTO state.suppressions (channel, address, action, reason, source, "
            "occurred_at) VALUES ('email', ?, 'suppress', 'unsubscribed', 'operator', ?)",
            [email, self.now],
        )

    def build(self) -> None:
        models.build(
            self.con, models.ListSettings(active_patient_months=24), sql_dir=sql_dir(), now=self.now
        )

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def tick(
        self, cfg: ClinicConfig | None = None, *, build: bool = True, send: bool = True, **delta
    ) -> dict:
        """Advance the clock, rebuild the models, run the journeys and campaigns, then dispatch
        through the local outbox, as a scheduled tick. ``build=False`` skips the rebuild where
        nothing a journey reads would change (faster); ``send=False`` leaves what was queued."""
        self.advance(**delta)
        if build:
            self.build()
        cfg = cfg or self.cfg()
        result = journeys.run_journeys(self.con, cfg, self.now)
        campaigns.freeze_due(self.con, cfg, self.now)
        if send:
            self.send(self.outbox, cfg)
        return result

    def send(self, outbox_dir: Path, cfg: ClinicConfig | None = None):
        """Dispatch what is due through the local outbox, with the marketing gate."""
        cfg = cfg or self.cfg()
        from tasks.messages.dispatch import Unsubscribe

        provider = OutboxProvider(outbox_dir, email_from="Test <t@example.com>", sms_from="Test")
        prepare = by_source_kind(
            {
                "trigger": no_triggers,
                "journey": journeys.Preparer(self.con, cfg),
                "campaign": campaigns.Preparer(self.con, cfg),
            }
        )
        return dispatch(
            self.con,
            providers={"email": provider, "sms": provider},
            prepare=prepare,
            templates=Templates(None),
            unsubscribe=Unsubscribe("test", "http://127.0.0.1:8765/unsubscribe", KEY),
            clock=lambda: self.now,
            gate=Gate.from_config(cfg, recheck=prepare),  # as flows/dispatch.py wires it
        )

    def messages(self, **where) -> list[ledger.LedgerRow]:
        rows = ledger.in_status(self.con, where.pop("status", "planned"))
        return [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]

    def all_messages(self) -> list[tuple]:
        return self.con.execute(
            "SELECT send_key, status, template, patient_id FROM state.messages ORDER BY message_id"
        ).fetchall()

    def enrolments(self, journey: str) -> list[tuple]:
        return self.con.execute(
            "SELECT patient_id, status, exit_reason, next_step FROM state.journey_enrolments "
            "WHERE journey = ? ORDER BY enrolment_id",
            [journey],
        ).fetchall()
