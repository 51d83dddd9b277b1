"""Names in clinic.yaml that pick Cliniko rows, and the ids they stood for when it mattered.

A trigger's filters and exclusions may name appointment types, categories, businesses and
practitioners (tasks/triggers/definition.py), and ``tag_categories`` names the categories whose
appointments tag a patient (tasks/config.py). Anyone can rename these in Cliniko. Matched by name
alone, a renamed "Admin Only" category would drop out of a reminder's exclusion and its tag
appointments would start getting SMS reminders. So a name is read once, then held to its ids:

- **A trigger going live** records the ids each of its names matches (``state.trigger_names``,
  kept with the activation in ``state.trigger_activations``; a category's ids are its appointment
  types). From then on its SQL picks rows by those ids: a rename in Cliniko keeps it on the same
  rows. An exclusion also leaves out what the name matches now (excluding more is the safe side);
  a filter never takes in rows the name came to match later (a category renamed *to* a filtered
  name must not widen who gets it). Editing the trigger in clinic.yaml re-dates its go-live
  (tasks/triggers/plan.py) and so reads its names afresh.
- **Drift** (a recorded name no longer names its ids, or names others) is a warning in every
  tick's summary and its alert (:func:`drift`); the trigger carries on with its recorded ids.
- **A name that matches nothing** where no ids are recorded for it (a typo, a row not in Cliniko
  yet) holds that trigger alone (:func:`unmatched`, through tasks.tick.held_sources): it plans,
  re-checks and sends nothing, and each tick's summary says why, until the name matches or
  clinic.yaml changes (its go-live is recorded as usual; once the name matches it plans what is
  still due since then, within each message's grace window, as any held trigger does). ``relay
  clinics`` reports it as an error. Before the first sync and model build nothing can be matched:
  then nothing is held here (the tick's circuit breaker holds everything anyway) and ``relay
  clinics`` says the names are not checked yet.
- **Tag categories**: each planning tick records the appointment types a tag category matches
  (``state.tag_types``); ``marts.appointments.is_tag`` keeps them tags after a rename (a warning
  says so). Taking a name out of ``tag_categories`` lets go of its recorded types. A name
  clinic.yaml writes there that matches nothing (:func:`unmatched_tags`) holds nothing (the
  models read it) but is a warning every tick and an error in ``relay clinics``.

Names compare as everywhere: trimmed, case ignored (:func:`definition.reference_lists`). The
filter predicates live here too (:func:`appointment_filters`); the candidate query
(tasks/triggers/query.py) fills its slots with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from tasks.triggers import patient_records
from tasks.triggers.definition import Trigger, reference_lists
from tasks.warehouse import one, relation_exists

# Filter kind -> (id column, name column) of marts.appointments. The only columns filters touch.
APPOINTMENT_REFERENCES: dict[str, tuple[str | None, str]] = {
    "appointment_types": ("appointment_type_id", "appointment_type_name"),
    "categories": (None, "category"),
    "businesses": ("business_id", "business_name"),
    "practitioners": ("practitioner_id", "practitioner_name"),
}

# Filter kind -> the column of marts.appointments a name's recorded ids are (a category's ids are
# its appointment types), and where the names live in Cliniko's rows: (table, id, name).
RECORDED_ID = {
    "appointment_types": "appointment_type_id",
    "categories": "appointment_type_id",
    "businesses": "business_id",
    "practitioners": "practitioner_id",
}
DIMENSIONS = {
    "appointment_types": (
        "staging.appointment_types",
        "appointment_type_id",
        "appointment_type_name",
    ),
    "categories": ("staging.appointment_types", "appointment_type_id", "category"),
    "businesses": ("staging.businesses", "business_id", "display_name"),
    "practitioners": ("staging.practitioners", "practitioner_id", "display_name"),
}
WHAT = {
    "appointment_types": "appointment type",
    "categories": "appointment type",
    "businesses": "business",
    "practitioners": "practitioner",
}
SINGULAR = {"appointment_types": "appointment type", "categories": "category",
            "businesses": "business", "practitioners": "practitioner"}  # fmt: skip
LIVE_NAMES = "state.live_trigger_names"


# --- the filter predicates (alias: a row of marts.appointments) ------------------------------------


def _reference(param: str) -> tuple[str, bool]:
    """(where in the trigger the values of ``$param`` are written, whether the name is also
    followed as it is now): exclusions follow it, filters and counted types stay on their ids."""
    if param == "count_types":
        return "filters.appointment_count.types", False
    section, _, kind = param.partition("_")
    return f"{'exclude' if section == 'exclude' else 'filters'}.{kind}", section == "exclude"


def _match(alias: str, kind: str, param: str) -> str:
    """The row matches ``$param_ids`` (ids written in clinic.yaml), ``$param_recorded`` (the ids
    its names matched when the trigger went live) or ``$param_names_now`` (names followed as
    they are now: an exclusion's, and any not recorded, as in a preview of a trigger not live).
    :func:`bind_recorded` fills the last two when the query runs. Every value is a bound
    parameter, every column a whitelisted one."""
    id_col, name_col = APPOINTMENT_REFERENCES[kind]
    parts = [] if id_col is None else [f"list_contains(${param}_ids::BIGINT[], {alias}.{id_col})"]
    parts.append(f"list_contains(${param}_recorded::BIGINT[], {alias}.{RECORDED_ID[kind]})")
    parts.append(f"list_contains(${param}_names_now::VARCHAR[], lower(trim({alias}.{name_col})))")
    return f"coalesce({' OR '.join(parts)}, false)"


def bind_recorded(
    con: duckdb.DuckDBPyConnection, used: Iterable[str], params: dict[str, Any]
) -> None:
    """Fill ``$x_recorded`` and ``$x_names_now`` for the filter parameters ``used`` (of
    :func:`_match`) from the names recorded for ``$trigger``'s current go-live: constants, so the
    query plans as one with ids written in clinic.yaml would."""
    wanted = [u.removesuffix("_recorded") for u in used if u.endswith("_recorded")]
    if not wanted:
        return
    recorded = _recorded(con).get(params["trigger"], {})
    for param in wanted:
        reference, follow_names = _reference(param)
        names = params[f"{param}_names"]
        mine = {name: ids for (ref, name), ids in recorded.items() if ref == reference}
        params[f"{param}_recorded"] = sorted({i for ids in mine.values() for i in ids})
        params[f"{param}_names_now"] = (
            names if follow_names else [n for n in names if n not in mine]
        )


def _bind_refs(params: dict[str, Any], param: str, values: tuple) -> None:
    ids, names = reference_lists(values)
    params[f"{param}_ids"] = ids
    params[f"{param}_names"] = names


def appointment_filters(trigger: Trigger, alias: str, params: dict[str, Any]) -> list[str]:
    """Predicates on one appointment (alias) for the trigger's filters and exclusions. A tag
    (is_tag: clinic.yaml tag_categories) is no first or nth appointment unless named (seed 000)."""
    named = trigger.filters.appointment_types or trigger.filters.categories
    predicates = [] if named or trigger.position is None else [f"NOT {alias}.is_tag"]
    for kind in APPOINTMENT_REFERENCES:
        values = getattr(trigger.filters, kind)
        if values:
            params["trigger"] = trigger.name
            _bind_refs(params, f"include_{kind}", values)
            predicates.append(_match(alias, kind, f"include_{kind}"))
    return predicates + exclusions(trigger, alias, params)


def exclusions(trigger: Trigger, alias: str, params: dict[str, Any]) -> list[str]:
    predicates = []
    for kind in ("appointment_types", "categories", "businesses"):
        values = getattr(trigger.exclude, kind)
        if values:
            params["trigger"] = trigger.name
            _bind_refs(params, f"exclude_{kind}", values)
            predicates.append(f"NOT {_match(alias, kind, f'exclude_{kind}')}")
    return predicates


# --- the names a trigger writes, and what they match now -----------------------------------------


@dataclass(frozen=True)
class Name:
    """One name written in a trigger: where (``filters.categories``), its kind, and the name
    as written and as compared (trimmed, lower-case)."""

    reference: str
    kind: str
    written: str
    name: str

    def describe(self) -> str:
        return f"{self.reference} '{self.written.strip()}'"


def names_of(trigger: Trigger) -> list[Name]:
    found: dict[tuple[str, str], Name] = {}
    sections = [("filters", trigger.filters, APPOINTMENT_REFERENCES), ("exclude", trigger.exclude,
                ("appointment_types", "categories", "businesses"))]  # fmt: skip
    places = [
        (f"{section}.{kind}", kind, getattr(values, kind))
        for section, values, kinds in sections
        for kind in kinds
    ]
    if trigger.filters.appointment_count is not None:
        places.append(
            ("filters.appointment_count.types", "appointment_types",
             trigger.filters.appointment_count.types)
        )  # fmt: skip
    for reference, kind, values in places:
        for value in values:
            if isinstance(value, str):
                name = reference_lists((value,))[1][0]
                found.setdefault((reference, name), Name(reference, kind, value, name))
    return list(found.values())


def matches_now(
    con: duckdb.DuckDBPyConnection, kinds: Iterable[str]
) -> dict[str, dict[str, list[int]]] | None:
    """Kind -> (name as compared -> the ids carrying it now), from the synced rows. None when
    a kind has no synced rows yet (before the first sync and build nothing can be matched)."""
    found: dict[str, dict[str, list[int]]] = {}
    for kind in set(kinds):
        table, id_col, name_col = DIMENSIONS[kind]
        if not relation_exists(con, table) or not one(con, f"SELECT count(*) FROM {table}")[0]:
            return None
        found[kind] = dict(
            con.execute(
                f"SELECT lower(trim({name_col})), list(DISTINCT {id_col} ORDER BY {id_col}) "
                f"FROM {table} WHERE {name_col} IS NOT NULL GROUP BY 1"
            ).fetchall()
        )
    return found


def _recorded(con: duckdb.DuckDBPyConnection) -> dict[str, dict[tuple[str, str], list[int]]]:
    """Live trigger -> (reference, name) -> the ids recorded when it went live."""
    if not relation_exists(con, LIVE_NAMES):
        return {}
    recorded: dict[str, dict[tuple[str, str], list[int]]] = {}
    for trigger, reference, name, ids in con.execute(
        f"SELECT trigger_name, reference, name, ids FROM {LIVE_NAMES}"
    ).fetchall():
        recorded.setdefault(trigger, {})[(reference, name)] = list(ids)
    return recorded


def _ids(ids: Iterable[int], kind: str) -> str:
    ids = sorted(ids)
    shown = ", ".join(str(i) for i in ids[:5]) + (
        f" and {len(ids) - 5} more" if len(ids) > 5 else ""
    )
    return f"{WHAT[kind]}{'s' if len(ids) != 1 else ''} {shown}"


def unmatched(
    con: duckdb.DuckDBPyConnection, triggers: Iterable[Trigger], *, enabled_only: bool = True
) -> dict[str, str]:
    """Trigger -> why it is held: a name with no ids recorded for it matches nothing in the
    synced data. Triggers whose names all match, or are recorded, or cannot be checked yet (no
    synced rows) are not here."""
    recorded = _recorded(con)
    held = {}
    for trigger in triggers:
        if enabled_only and not trigger.enabled:
            continue
        names = [
            n
            for n in names_of(trigger)
            if (n.reference, n.name) not in recorded.get(trigger.name, {})
        ]
        if not names:
            continue
        now = matches_now(con, (n.kind for n in names))
        if now is None:
            continue
        missing = [n for n in names if not now[n.kind].get(n.name)]
        if missing:
            held[trigger.name] = (
                "; ".join(f"{n.describe()} matches no {SINGULAR[n.kind]} in Cliniko" for n in missing)
                + " (check the spelling in clinic.yaml, or write the Cliniko id)"
            )  # fmt: skip
    return held


# --- recording at go-live, and drift -------------------------------------------------------------


def record(
    con: duckdb.DuckDBPyConnection,
    triggers: Iterable[Trigger],
    tag_categories: Iterable[str],
    live: dict[str, datetime],
    now: datetime,
) -> dict[str, str]:
    """In the planning tick's transaction: record the ids of each live trigger's names (once per
    go-live), and the appointment types of the tag categories. Returns the triggers held because
    a name matches nothing (:func:`unmatched`): nothing is recorded for them."""
    _record_tag_types(con, tag_categories, now)
    triggers = [t for t in triggers if t.name in live]
    held = unmatched(con, triggers, enabled_only=False)
    recorded = _recorded(con)
    for trigger in triggers:
        names = names_of(trigger)
        if trigger.name in held or trigger.name in recorded or not names:
            continue
        now_ids = matches_now(con, (n.kind for n in names))
        if now_ids is None:  # nothing synced yet: recorded by the first tick that can
            continue
        con.executemany(
            "INSERT INTO state.trigger_names (trigger_name, went_live_at, reference, name, ids, "
            "recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                [
                    trigger.name,
                    live[trigger.name],
                    n.reference,
                    n.name,
                    now_ids[n.kind][n.name],
                    now,
                ]
                for n in names
            ],
        )
    return held


def _record_tag_types(
    con: duckdb.DuckDBPyConnection, tag_categories: Iterable[str], now: datetime
) -> None:
    categories = reference_lists(tuple(tag_categories))[1]
    con.execute(
        "DELETE FROM state.tag_types WHERE NOT list_contains(?::VARCHAR[], tag_category)",
        [categories],
    )
    if categories and relation_exists(con, "staging.appointment_types"):
        con.execute(
            "INSERT INTO state.tag_types (tag_category, appointment_type_id, recorded_at) "
            "SELECT DISTINCT lower(trim(category)), appointment_type_id, ? "
            "FROM staging.appointment_types "
            "WHERE list_contains(?::VARCHAR[], lower(trim(category))) "
            "ON CONFLICT DO NOTHING",
            [now, categories],
        )


def drift(
    con: duckdb.DuckDBPyConnection,
    triggers: Iterable[Trigger],
    tag_categories: Iterable[str],
    *,
    enabled_only: bool = True,
) -> list[str]:
    """Warnings, one line each (ids and names of clinic.yaml, never a patient's): recorded names
    that no longer name their ids in Cliniko, or name others now; tag categories likewise; alert
    names and custom fields that match nothing (of switched-off triggers too with
    ``enabled_only=False``, as ``relay clinics`` asks)."""
    warnings = []
    recorded = _recorded(con)
    triggers = list(triggers)
    for trigger in triggers:
        names = [
            n for n in names_of(trigger) if (n.reference, n.name) in recorded.get(trigger.name, {})
        ]
        now = matches_now(con, (n.kind for n in names)) if names else None
        for n in names if now is not None else ():
            assert now is not None  # no names to go through without it
            was, is_ = (
                set(recorded[trigger.name][(n.reference, n.name)]),
                set(now[n.kind].get(n.name, ())),
            )
            gone, new = was - is_, is_ - was
            if not gone and not new:
                continue
            parts = []
            if gone:
                parts.append(
                    f"no longer names {_ids(gone, n.kind)} (renamed in Cliniko?): the trigger "
                    "stays on the ids it went live with"
                )
            if new:
                parts.append(
                    f"now also names {_ids(new, n.kind)}: "
                    + ("excluded too" if n.reference.startswith("exclude.")
                       else "not taken in; edit the trigger to read its names afresh")
                )  # fmt: skip
            warnings.append(f"trigger '{trigger.name}': {n.describe()} " + "; ".join(parts))
    warnings += _tag_drift(con, tag_categories)
    # medical-alert names and custom fields are matched as written: only a warning (patient_records)
    return warnings + patient_records.warnings(con, triggers, enabled_only=enabled_only)


def _tag_drift(con: duckdb.DuckDBPyConnection, tag_categories: Iterable[str]) -> list[str]:
    written = {reference_lists((c,))[1][0]: c.strip() for c in tag_categories}
    categories = sorted(written)
    if not categories or not relation_exists(con, "staging.appointment_types"):
        return []
    rows = con.execute(
        "SELECT t.tag_category, list(t.appointment_type_id ORDER BY t.appointment_type_id) "
        "FROM state.tag_types t JOIN staging.appointment_types s USING (appointment_type_id) "
        "WHERE list_contains(?::VARCHAR[], t.tag_category) "
        "AND lower(trim(s.category)) IS DISTINCT FROM t.tag_category GROUP BY 1 ORDER BY 1",
        [categories],
    ).fetchall()
    return [
        f"tag_categories '{written[category]}' no longer names {_ids(ids, 'categories')} (renamed in "
        "Cliniko?): they stay tags; to let them go, take the name out of tag_categories"
        for category, ids in rows
    ]


def unmatched_tags(con: duckdb.DuckDBPyConnection, written: Iterable[str]) -> list[str]:
    """One line per tag category clinic.yaml writes (``written``: not the default it did not
    write) that matches no category in Cliniko and has no types recorded (``state.tag_types``):
    a typo, under which every tag appointment counts as a visit. Nothing before the first sync."""
    names = {reference_lists((c,))[1][0]: c.strip() for c in written}
    now = matches_now(con, ["categories"]) if names else None
    if now is None:
        return []
    recorded = {
        c
        for (c,) in con.execute(
            "SELECT DISTINCT tag_category FROM state.tag_types "
            "WHERE list_contains(?::VARCHAR[], tag_category)",
            [sorted(names)],
        ).fetchall()
    }
    return [
        f"tag_categories '{names[c]}' matches no category in Cliniko: its appointments count as "
        "visits (check the spelling in clinic.yaml)"
        for c in sorted(names)
        if not now["categories"].get(c) and c not in recorded
    ]


def check(
    con: duckdb.DuckDBPyConnection,
    triggers: Iterable[Trigger],
    tag_categories: Iterable[str],
    written_tags: Iterable[str] = (),
) -> tuple[list[str], list[str]] | None:
    """``relay clinics``: (errors, warnings) about the configuration's names against the synced
    data; None when nothing is synced and built yet (the first tick checks them). An error is a
    name matching nothing where no ids are recorded for it (an enabled trigger: held; a disabled
    one would be held when switched on), or a tag category clinic.yaml writes that matches
    nothing (:func:`unmatched_tags`); a warning, drift (:func:`drift`)."""
    triggers = list(triggers)
    if matches_now(con, DIMENSIONS) is None:
        return None
    errors = [
        f"trigger '{name}'{'' if enabled else ' (disabled)'}: {why}"
        for name, why in unmatched(con, triggers, enabled_only=False).items()
        for enabled in [next(t.enabled for t in triggers if t.name == name)]
    ]
    errors += unmatched_tags(con, written_tags)
    return errors, drift(con, triggers, tag_categories, enabled_only=False)
