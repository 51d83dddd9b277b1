"""The pager against a Cliniko that keeps updated_at finer than it shows it.

Cliniko writes ``updated_at`` to the second, but a Rails app on Postgres keeps microseconds and
sorts on them: by ``sort=updated_at,id`` the rows of one second come in the order they were saved,
not by id (the sandbox keeps whole seconds, so its ties are broken by id). Rows saved one by one
by a job or a bulk action can fill pages of one second: the walk through that second must still
read each of them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import httpx

from tasks import warehouse
from tasks.cliniko import resources
from tasks.cliniko import sync as extract
from tasks.cliniko.client import ClinikoClient, Retry

SECOND = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


class FinerClinic:
    """``/patients`` over rows whose hidden ``saved`` time orders them; ``updated_at`` shows its
    second. Filters on updated_at compare the hidden time, as SQL on the column would."""

    def __init__(self, seed: int = 1) -> None:
        rng = random.Random(seed)
        ids = rng.sample(range(1_000, 1_000_000), 350)
        # 330 saves within one second, each a few milliseconds apart; 20 earlier ones.
        self.rows = [
            (i, SECOND + timedelta(microseconds=n * 3000)) for n, i in enumerate(ids[:330])
        ]
        self.rows += [(i, SECOND - timedelta(seconds=20 - n)) for n, i in enumerate(ids[330:])]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        query = parse_qsl(request.url.query.decode())
        params = dict(query)
        page, per_page = int(params.get("page", 1)), int(params.get("per_page", 50))
        rows = self.rows
        for name, value in query:
            if name != "q[]" or value.endswith(":*"):
                continue
            field, _, rest = value.partition(":")
            op = next(o for o in OPS if rest.startswith(o))
            bound = rest[len(op) :]
            if field == "updated_at":
                rows = [r for r in rows if OPS[op](r[1], datetime.fromisoformat(bound))]
            else:
                rows = [r for r in rows if OPS[op](r[0], int(bound))]
        keys = params.get("sort", "created_at").split(",")
        rows = sorted(rows, key=lambda r: tuple(r[0] if k == "id" else r[1] for k in keys))
        shown = rows[(page - 1) * per_page : page * per_page]
        links = {"self": str(request.url)}
        if page * per_page < len(rows):
            links["next"] = str(request.url.copy_set_param("page", page + 1))
        records = [
            {"id": str(i), "updated_at": saved.strftime("%Y-%m-%dT%H:%M:%SZ")} for i, saved in shown
        ]
        return httpx.Response(
            200, json={"patients": records, "total_entries": len(rows), "links": links}
        )


def test_a_second_whose_rows_come_in_a_finer_hidden_order_is_read_whole():
    clinic = FinerClinic()
    con = warehouse.memory_db()
    retry = Retry(attempts=1)
    with ClinikoClient("k-au1", "ops@clinic.com.au", "http://10.9.9.9/v1", None, retry) as client:
        client._http = httpx.Client(transport=httpx.MockTransport(clinic))
        for full in (False, True):  # a sync, then a reconciliation (the same walk, then marks)
            extract.Sync(con, client, full=full, resources=(resources.get("patients"),)).run()
            held = dict(con.execute("SELECT id, removed_at FROM raw.patients").fetchall())
            assert sorted(held) == sorted(i for i, _ in clinic.rows)
            assert set(held.values()) == {None}  # no row of the second taken for deleted
    con.close()
