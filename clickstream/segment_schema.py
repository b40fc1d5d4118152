"""Segment's warehouse schema rules, in one place: names, flattening, types, truncation, limits.

People arrive from Segment with dbt models and saved queries written against Segment's warehouse
schema (https://segment.com/docs/connections/storage/warehouses/schema/, source
``segmentio/segment-docs: src/connections/storage/warehouses/schema.md``): one schema per source,
tables ``tracks``, ``identifies``, ``users``, ``pages``, ``screens``, ``groups``, ``aliases`` and one
table per track event, with properties/traits/context flattened into columns. This module says what
those tables and columns are; :mod:`clickstream.segment_tables` applies it to DuckDB (the local
loader) and to Redshift (the refresh workflow's Lambda), so both warehouses get the same schema.

Nothing here touches a database: functions take observations (which keys arrived, with which JSON
types) and the columns that exist, and return names, DDL and INSERT statements in Redshift SQL.
DuckDB runs the same statements transpiled by :func:`clickstream.sqlmodel.transpile`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# --- names ------------------------------------------------------------------------------------------


def _is_lower(c: str) -> bool:
    return "a" <= c <= "z"


def _is_upper(c: str) -> bool:
    return "A" <= c <= "Z"


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def snakecase(s: str) -> str:
    """Segment's slug rule for table and column names: a port of ``segmentio/go-snakecase``.

    Segment's docs: "All schemas convert collection and property names from CamelCase to snake_case
    using the go-snakecase package" (warehouses/schema.md). Ported from ``snake.go`` at commit
    5e4a23e7a7bf2d4ede976046611e07ffba02224c: ASCII letters and digits are kept (upper case lowered,
    a new word at each upper-case run), every other character (including non-ASCII bytes) separates
    words, and words are joined by one ``_``. ``Order Completed`` -> ``order_completed``,
    ``productViewed`` -> ``product_viewed``, ``CStringRef`` -> ``cstring_ref``.
    """
    b = s.encode("utf-8")  # go-snakecase works on bytes: a multi-byte character is a separator
    n = len(b)
    chars = [chr(x) for x in b]
    idx = 0
    has_lower = has_underscore = lower_since_underscore = False
    while idx < n:
        c = chars[idx]
        if _is_lower(c):
            has_lower = True
            if has_underscore:
                lower_since_underscore = True
        elif _is_digit(c):
            pass
        elif c == "_" and 0 < idx < n - 1 and (_is_lower(chars[idx + 1]) or _is_digit(chars[idx + 1])):
            has_underscore = True
            lower_since_underscore = False
        else:
            break
        idx += 1
    if idx == n:
        return s
    out = chars[:idx]
    if _is_upper(chars[idx]) and (not has_lower or (has_underscore and not lower_since_underscore)):
        idx = _copy_word(chars, idx, out)
    while idx < n:
        c = chars[idx]
        if not (_is_lower(c) or _is_upper(c) or _is_digit(c)):
            idx += 1
            continue
        if out:
            out.append("_")
        idx = _copy_word(chars, idx, out)
    return "".join(out)


def _copy_word(chars: list[str], idx: int, out: list[str]) -> int:
    """One word of go-snakecase: its upper-case run (lowered) and the lower-case run after it, digits
    belonging to either; returns where the word ends."""
    n = len(chars)
    while idx < n and (_is_upper(chars[idx]) or _is_digit(chars[idx])):
        out.append(chars[idx].lower())
        idx += 1
    while idx < n and (_is_lower(chars[idx]) or _is_digit(chars[idx])):
        out.append(chars[idx])
        idx += 1
    return idx


# Redshift identifiers are at most 127 bytes (longer ones are truncated by Redshift itself; we cut
# them first so that the name we record is the name that exists).
# https://docs.aws.amazon.com/redshift/latest/dg/r_names.html
MAX_IDENTIFIER_BYTES = 127

# The standard tables of a source schema. A track event whose slug is one of these would land in the
# standard table, so its table gets a leading underscore, which no slug can start with.
STANDARD_TABLES = ("tracks", "identifies", "users", "pages", "screens", "groups", "aliases")
RESERVED_TABLES = frozenset(STANDARD_TABLES) | {"accounts"}  # Segment's (beta) groups upsert table


def _cut(name: str) -> str:
    return name.encode("utf-8")[:MAX_IDENTIFIER_BYTES].decode("utf-8", "ignore").rstrip("_")


def event_table(event_text: str) -> str | None:
    """The per-event table of a track event (``Order Completed`` -> ``order_completed``); None when
    the name has no letter or digit (such events are in ``tracks`` only)."""
    slug = _cut(snakecase(event_text))
    if not slug:
        return None
    return "_" + slug if slug in RESERVED_TABLES else slug


def column_name(path: Iterable[str], prefix: str = "") -> str | None:
    """A flattened key's column: each key snake_cased, joined by ``_`` (``address.city`` ->
    ``address_city``; with prefix ``context``: ``app.version`` -> ``context_app_version``)."""
    parts = [prefix] if prefix else []
    for key in path:
        slug = snakecase(key)
        if not slug:
            return None  # a key with no letter or digit has no column name
        parts.append(slug)
    if len(parts) == (1 if prefix else 0):
        return None
    return _cut("_".join(parts)) or None


def schema_name(source: str, taken: Iterable[str] = ()) -> str | None:
    """The schema of a source's tables: its slug (source ``web`` -> schema ``web``, like Segment's
    ``<source>.pages``). A slug that is already a schema of the pipeline or of the database
    (``taken``, ``public``, ``information_schema``, ``pg_*``...) gets the suffix ``_source``."""
    slug = _cut(snakecase(source))
    if not slug:
        return None
    if slug in set(taken) | SYSTEM_SCHEMAS or slug.startswith("pg_"):
        slug = _cut(slug + "_source")
    return slug


SYSTEM_SCHEMAS = frozenset({"public", "information_schema", "pg_catalog", "pg_internal", "main", "temp",
                            "system", "catalog"})


def quote(identifier: str) -> str:
    """Every generated identifier is quoted: slugs may be reserved words in Redshift or DuckDB
    (``timestamp``, ``user``, ``offset``, ``order``...)."""
    return '"' + identifier.replace('"', '""') + '"'


def literal(value: str, dialect: str = "redshift") -> str:
    """A string literal. Redshift reads a backslash in a literal as an escape; DuckDB does not."""
    if dialect == "redshift":
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


# --- types and values -------------------------------------------------------------------------------

# "we set the string column length limit at 512 characters. Longer strings are truncated."
# (warehouses/schema.md, Column Sizing). VARCHAR(n) counts bytes on Redshift and 512 UTF-8 characters
# take at most 2,048 bytes, so the truncated value always fits.
# https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html
STRING_CHARS = 512
STRING_BYTES = 4 * STRING_CHARS

ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
# The same test in SQL (the model's, for timestamps): a value must look like one before it is cast.
SQL_TIMESTAMP_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}"


class Kind(StrEnum):
    """Segment's column types (warehouses/schema.md, Data Types)."""

    BOOLEAN = "boolean"
    INTEGER = "integer"
    FLOAT = "float"
    TIMESTAMP = "timestamp"
    STRING = "varchar"

    @property
    def redshift(self) -> str:
        return _REDSHIFT_TYPES[self]


_REDSHIFT_TYPES = {Kind.BOOLEAN: "BOOLEAN", Kind.INTEGER: "BIGINT", Kind.FLOAT: "DOUBLE PRECISION",
                   Kind.TIMESTAMP: "TIMESTAMPTZ", Kind.STRING: f"VARCHAR({STRING_BYTES})"}
INT64 = (-(2**63), 2**63 - 1)


def kind_of(value: Any) -> Kind | None:
    """The column type a JSON value asks for; None for null (no column is made for it). Arrays are
    stored as their JSON text, so they ask for a string column; objects are flattened, never asked."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Kind.BOOLEAN
    if isinstance(value, int):
        return Kind.INTEGER if INT64[0] <= value <= INT64[1] else Kind.FLOAT
    if isinstance(value, float):
        return Kind.FLOAT
    if isinstance(value, str):
        return Kind.TIMESTAMP if ISO_TIMESTAMP.match(value) else Kind.STRING
    return Kind.STRING


def widest(kinds: Iterable[Kind]) -> Kind:
    """One type for a new column that arrived with several in the same batch: integers and floats
    make a float, any other mix a string, so no value of the batch that creates the column is lost.

    (Segment takes "the most recent occurrence" in the batch; which is most recent depends on load
    order, and a widest type is the same on every warehouse and every rerun.)
    """
    kinds = set(kinds)
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {Kind.INTEGER, Kind.FLOAT}:
        return Kind.FLOAT
    return Kind.STRING


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Segment's flattening of one object into column -> value (what :func:`column_name` and the SQL
    extraction do row by row): nested objects joined with ``_``, arrays as JSON text, nulls skipped.
    Used by tests and by discovery in Python; the warehouses extract the same paths in SQL."""
    import json

    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for key, value in node.items():
            here = (*path, key)
            if isinstance(value, dict):
                walk(value, here)
                continue
            if value is None:
                continue
            name = column_name(here, prefix)
            if name is None or name in out:
                continue
            if isinstance(value, list):
                value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            if isinstance(value, str):
                value = value[:STRING_CHARS]
            out[name] = value

    walk(obj, ())
    return out


# --- tables -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    # Redshift SQL over the batch table's columns (alias ``b``) giving the value, already converted.
    expr: str = ""


def _text(expr: str) -> str:
    return f"LEFT({expr}, {STRING_CHARS})"


# Columns every table but `users` has, and where they come from in the combined `events` table
# (Segment's common columns: warehouses/schema.md, tables and "uuid, uuid_ts, and loaded_at").
COMMON: tuple[Column, ...] = (
    Column("id", Kind.STRING, _text("b.message_id")),
    Column("anonymous_id", Kind.STRING, _text("b.anonymous_id")),
    Column("user_id", Kind.STRING, _text("b.user_id")),
    Column("received_at", Kind.TIMESTAMP, "b.received_at"),
    Column("sent_at", Kind.TIMESTAMP, "b.sent_at"),
    Column("original_timestamp", Kind.TIMESTAMP, "b.original_timestamp"),
    Column("timestamp", Kind.TIMESTAMP, 'b."timestamp"'),
    Column("uuid_ts", Kind.TIMESTAMP, "b.uuid_ts"),
)
# context_* columns the combined table holds as columns (the model's own rules: merged batch
# context, request IP for client-side libraries). Other context keys come from its `context` JSON
# when the table has one.
EVENTS_CONTEXT_COLUMNS = (
    "context_ip", "context_user_agent", "context_page_url", "context_page_path", "context_page_title",
    "context_page_referrer", "context_page_search", "context_library_name", "context_library_version",
    "context_locale", "context_timezone", "context_campaign_name", "context_campaign_source",
    "context_campaign_medium", "context_campaign_term", "context_campaign_content",
)
TRACK_COLUMNS = (Column("event", Kind.STRING, "m.event"), Column("event_text", Kind.STRING, _text("b.event_text")))
# A per-event table's `event` is its own name (tracks look it up in the batch's event map).
EVENT_COLUMN = "event"
# Per table kind: the message type, its own columns, and which JSON column becomes columns.
TABLE_KINDS: dict[str, tuple[str, tuple[Column, ...], str | None]] = {
    "tracks": ("track", TRACK_COLUMNS, None),
    "event": ("track", TRACK_COLUMNS, "properties"),
    "identifies": ("identify", (), "traits"),
    "pages": ("page", (Column("name", Kind.STRING, _text("b.name")),
                       Column("category", Kind.STRING, _text("b.category"))), "properties"),
    "screens": ("screen", (Column("name", Kind.STRING, _text("b.name")),
                           Column("category", Kind.STRING, _text("b.category"))), "properties"),
    "groups": ("group", (Column("group_id", Kind.STRING, _text("b.group_id")),), "traits"),
    "aliases": ("alias", (Column("previous_id", Kind.STRING, _text("b.previous_id")),), None),
}
TYPE_TABLE = {"identify": "identifies", "page": "pages", "screen": "screens", "group": "groups",
              "alias": "aliases"}
USERS_COLUMNS = (Column("id", Kind.STRING), Column("received_at", Kind.TIMESTAMP),
                 Column("uuid_ts", Kind.TIMESTAMP))
# Names a property can never take in any table: Segment "discards properties with the same name as the
# reserved column name (for example, user_id)" (warehouses/schema.md, Tracks vs. Events Tables). Each
# table's own columns (`name` of pages, `group_id` of groups...) are reserved in that table only.
RESERVED_COLUMNS = frozenset({c.name for c in COMMON} | set(EVENTS_CONTEXT_COLUMNS) | {"uuid", "loaded_at"})


def json_text(json_column: str, path: tuple[str, ...], dialect: str = "redshift") -> str:
    """Text of one key of a JSON text column (JSON text for arrays and objects; NULL when missing)."""
    if dialect == "redshift":
        # https://docs.aws.amazon.com/redshift/latest/dg/JSON_EXTRACT_PATH_TEXT.html
        args = ", ".join(literal(k) for k in path)
        return f"NULLIF(JSON_EXTRACT_PATH_TEXT(b.{json_column}, {args}), '')"
    # DuckDB: an RFC 6901 pointer names any key exactly
    return f"NULLIF(json_extract_string(b.{json_column}, {literal(json_pointer(path), dialect)}), '')"


def json_pointer(path: tuple[str, ...]) -> str:
    return "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in path)


def convert(v: str, kind: Kind, dialect: str = "redshift") -> str:
    """SQL converting the text ``v`` of a JSON value to a column's type.

    A value of another type than the column's is converted where it can be (any value into a string
    column as its JSON text, a numeric string or float into an integer column, an integer into a
    float column, an ISO-8601 string into a timestamp column) and is NULL otherwise; the `events`
    table keeps the original either way.
    """
    if kind is Kind.STRING:
        return _text(v)
    if kind is Kind.INTEGER:
        return f"COALESCE(TRY_CAST({v} AS BIGINT), TRY_CAST(TRY_CAST({v} AS DOUBLE PRECISION) AS BIGINT))"
    if kind is Kind.FLOAT:
        return f"TRY_CAST({v} AS DOUBLE PRECISION)"
    if kind is Kind.BOOLEAN:
        return f"CASE {v} WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END"
    test = (f"{v} ~ '{SQL_TIMESTAMP_PATTERN}'" if dialect == "redshift"
            else f"regexp_matches({v}, '{SQL_TIMESTAMP_PATTERN}')")
    return f"CASE WHEN {test} THEN TRY_CAST({v} AS TIMESTAMPTZ) END"


def value_expr(json_column: str, path: tuple[str, ...], kind: Kind, dialect: str = "redshift") -> str:
    """One flattened key of a JSON text column, converted to its column's type."""
    return convert(json_text(json_column, path, dialect), kind, dialect)


# --- planning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Bounds on what one run may add, so a flood of new names (the write key is public) cannot make
    a run unbounded or a table unusable. What a bound holds back is added by a later run when the
    key arrives again; its values stay in `events` meanwhile."""

    new_tables: int = 2000
    new_columns: int = 2000
    # Redshift allows 1,600 columns per table (https://docs.aws.amazon.com/redshift/latest/dg/amazonredshift-limits.html
    # -> "Columns per table"); the common columns need some.
    columns_per_table: int = 1500


@dataclass(frozen=True)
class Observation:
    """Discovery's finding: in this batch, messages of ``source``/``table`` had a non-null value of
    this JSON kind at ``path`` of ``root`` (``properties``, ``traits`` or ``context``)."""

    source: str
    table: str  # a standard table name, or "event:<event_text>"
    root: str
    path: tuple[str, ...]
    kind: Kind


@dataclass
class TablePlan:
    schema: str
    table: str
    kind: str  # key of TABLE_KINDS, or "users"
    source: str
    event_texts: list[str] = field(default_factory=list)
    create: bool = False
    columns: dict[str, Kind] = field(default_factory=dict)  # all columns after this run, in order
    add: list[str] = field(default_factory=list)  # columns this run adds to an existing table
    # flattened column -> (root, paths that feed it); a column fed by several keys takes the first non-null
    sources: dict[str, tuple[str, list[tuple[str, ...]]]] = field(default_factory=dict)


@dataclass
class Plan:
    tables: list[TablePlan]
    deferred_tables: int = 0
    deferred_columns: int = 0
    event_names: dict[str, str] = field(default_factory=dict)  # event_text -> table, new this run


def base_columns(kind: str, context_columns: Iterable[str]) -> dict[str, Kind]:
    if kind == "users":
        return {c.name: c.kind for c in USERS_COLUMNS}
    cols = {c.name: c.kind for c in COMMON}
    cols.update(dict.fromkeys(context_columns, Kind.STRING))
    cols.update({c.name: c.kind for c in TABLE_KINDS[kind][1]})
    return cols


def plan(observations: Iterable[Observation], existing: Mapping[tuple[str, str], Mapping[str, Kind]], *,
         batch_tables: Iterable[tuple[str, str]], taken_schemas: Iterable[str] = (),
         known_events: Mapping[str, str] | None = None, limits: Limits = Limits()) -> Plan:
    """What this run creates and adds, and which columns each table's INSERT fills.

    ``batch_tables``: (source, table) pairs with rows in the batch (table as in :class:`Observation`);
    ``existing``: (schema, table) -> columns as they are now; ``known_events``: event_text -> table
    names already recorded. Deterministic: tables and columns are taken in sorted order, so a rerun
    of the same batch plans the same thing.
    """
    taken = list(taken_schemas)
    known_events = dict(known_events or {})
    by_table: dict[tuple[str, str], dict[str, tuple[str, set[Kind], list[tuple[str, ...]]]]] = {}
    for ob in observations:
        prefix = "context" if ob.root == "context" else ""
        name = column_name(ob.path, prefix)
        if name is None:
            continue
        cols = by_table.setdefault((ob.source, ob.table), {})
        root, kinds, paths = cols.setdefault(name, (ob.root, set(), []))
        if root != ob.root:
            continue  # a context key and a property with the same column: the first root keeps it
        kinds.add(ob.kind)
        if ob.path not in paths:
            paths.append(ob.path)
    wanted = set(batch_tables) | set(by_table)
    # Every identify also updates `users`.
    wanted |= {(src, "users") for src, t in list(wanted) if t == "identifies"}
    result = Plan(tables=[])
    new_tables = new_columns = 0
    for source, table in sorted(wanted):
        schema = schema_name(source, taken)
        if schema is None:
            continue
        if table.startswith("event:"):
            event_text = table[len("event:"):]
            name = known_events.get(event_text) or event_table(event_text)
            if name is None:
                continue
            kind = "event"
        else:
            name, kind, event_text = table, table, None
        current = existing.get((schema, name))
        tp = next((t for t in result.tables if (t.schema, t.table) == (schema, name)), None)
        if tp is None:
            if current is None and new_tables >= limits.new_tables:
                result.deferred_tables += 1
                continue
            tp = TablePlan(schema, name, kind, source, create=current is None)
            tp.columns = dict(current) if current is not None else base_columns(kind, EVENTS_CONTEXT_COLUMNS)
            if current is None:
                new_tables += 1
            result.tables.append(tp)
        if event_text is not None:
            tp.event_texts.append(event_text)
            if event_text not in known_events:
                result.event_names[event_text] = name
        if kind == "users":
            # users' trait columns are those identifies has (planned just before: sorted order)
            ident = next((t for t in result.tables if (t.schema, t.table) == (schema, "identifies")), None)
            if ident is None:
                continue
            base = base_columns("identifies", EVENTS_CONTEXT_COLUMNS)
            for col, col_kind in ident.columns.items():
                if col not in base and col not in tp.columns and len(tp.columns) < limits.columns_per_table:
                    tp.columns[col] = col_kind
                    if not tp.create:
                        tp.add.append(col)
            continue
        base = base_columns(kind, EVENTS_CONTEXT_COLUMNS)
        obs = by_table.get((source, table), {})
        for col in sorted(obs):
            root, kinds, paths = obs[col]
            if col in base or col in RESERVED_COLUMNS:
                continue  # Segment discards properties named like a reserved column
            if col not in tp.columns:
                if new_columns >= limits.new_columns or len(tp.columns) >= limits.columns_per_table:
                    result.deferred_columns += 1
                    continue
                tp.columns[col] = widest(kinds)
                new_columns += 1
                if not tp.create:
                    tp.add.append(col)
            have = tp.sources.setdefault(col, (root, []))
            have[1].extend(p for p in paths if p not in have[1])
    return result


# --- SQL --------------------------------------------------------------------------------------------


def table_ddl(tp: TablePlan, dialect: str = "redshift") -> list[str]:
    """CREATE TABLE for a new table, one ALTER TABLE ADD COLUMN per new column (Redshift adds one
    column per statement: https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html). Sorted
    by ``received_at`` like Segment's tables ("All tables use received_at for the sort key")."""
    target = f"{quote(tp.schema)}.{quote(tp.table)}"
    if tp.create:
        cols = ",\n    ".join(f"{quote(c)} {k.redshift}" for c, k in tp.columns.items())
        sort = "\nSORTKEY (received_at)" if dialect == "redshift" else ""
        return [f"CREATE TABLE IF NOT EXISTS {target} (\n    {cols}\n){sort};"]
    return [f"ALTER TABLE {target} ADD COLUMN {quote(c)} {tp.columns[c].redshift};" for c in tp.add]


def _column_expr(tp: TablePlan, col: str, kind: Kind, dialect: str,
                 slots: Mapping[tuple[str, tuple[str, ...]], str]) -> str:
    if tp.kind == "event" and col == EVENT_COLUMN:
        return literal(tp.table)
    for c in (*COMMON, *TABLE_KINDS.get(tp.kind, ("", (), None))[1]):
        if c.name == col:
            return c.expr
    if col in EVENTS_CONTEXT_COLUMNS:
        return _text(f"b.{col}")
    if col in tp.sources:
        root, paths = tp.sources[col]
        exprs = [convert(slots[(root, p)], kind, dialect) if slots else value_expr(root, p, kind, dialect)
                 for p in paths]
        return exprs[0] if len(exprs) == 1 else f"COALESCE({', '.join(exprs)})"
    return "NULL"  # a column no key of this batch fills


def insert_sql(tp: TablePlan, batch: str, event_map: str, dialect: str = "redshift") -> str:
    """INSERT of this batch's rows into one table. ``batch``: the staged batch (rows of `events` plus
    ``uuid_ts``); ``event_map``: the event_text -> table names.

    On DuckDB each JSON column is parsed once per row: all its keys are extracted by one
    ``json_extract_string(col, [pointers])`` (each extraction would parse the text again).
    """
    msg_type, _, _ = TABLE_KINDS[tp.kind]
    target = f"{quote(tp.schema)}.{quote(tp.table)}"
    names = list(tp.columns)
    source = batch
    slots: dict[tuple[str, tuple[str, ...]], str] = {}
    if dialect == "duckdb":
        by_root: dict[str, list[tuple[str, ...]]] = {}
        for col in names:
            if col in tp.sources:
                root, paths = tp.sources[col]
                by_root.setdefault(root, []).extend(p for p in paths if p not in by_root.get(root, []))
        extra = []
        for root, paths in sorted(by_root.items()):
            ptrs = ", ".join(literal(json_pointer(p), dialect) for p in paths)
            extra.append(f"json_extract_string(b.{root}, [{ptrs}]) AS __{root}")
            for i, p in enumerate(paths, 1):
                slots[(root, p)] = f"NULLIF(b.__{root}[{i}], '')"
        if extra:
            source = f"(SELECT b.*, {', '.join(extra)} FROM {batch} AS b)"
    exprs = [f"{_column_expr(tp, c, tp.columns[c], dialect, slots)} AS {quote(c)}" for c in names]
    where = [f"b.source = {literal(tp.source, dialect)}", f"b.type = {literal(msg_type)}"]
    if tp.kind == "event":  # the event names this table holds: the filter reaches the scan
        where.append(f"b.event_text IN ({', '.join(literal(e, dialect) for e in sorted(tp.event_texts))})")
    if source != batch:
        source = source[:-1] + "\n    WHERE " + "\n      AND ".join(where) + ")"
    join = ""
    if tp.kind == "tracks":
        join = f"\nLEFT JOIN {event_map} AS m ON m.event_text = b.event_text"
    return (f"INSERT INTO {target} ({', '.join(quote(c) for c in names)})\n"
            f"SELECT\n    " + ",\n    ".join(exprs) + f"\nFROM {source} AS b{join}\nWHERE " + "\n  AND ".join(where)
            + ";")


def users_sql(tp: TablePlan, identifies: TablePlan, batch: str, scratch: str, dialect: str = "redshift") -> list[str]:
    """Upsert of `users`: one row per user_id, each trait column holding its latest non-null value.

    Segment: "identify calls are upserted on user_id into this table ... This table holds the latest
    state of a user" (warehouses/schema.md). The batch's identifies, latest last (by ``timestamp``,
    then ``received_at`` and ``id``), override the row a user has; traits the batch does not send
    keep their value.
    """
    target = f"{quote(tp.schema)}.{quote(tp.table)}"
    own = {c.name for c in USERS_COLUMNS}
    traits = [c for c in tp.columns if c not in own and c in identifies.columns]
    window = ('OVER (PARTITION BY i.user_id ORDER BY i."timestamp", i.received_at, i.id '
              "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)")
    latest = ",\n        ".join(
        [f"LAST_VALUE(i.received_at) {window} AS received_at"]
        + [f"LAST_VALUE(i.{quote(c)} IGNORE NULLS) {window} AS {quote(c)}" for c in traits])
    merged = ",\n    ".join(
        ["n.id", "n.received_at", "n.uuid_ts"]
        + [f"COALESCE(n.{quote(c)}, u.{quote(c)}) AS {quote(c)}" for c in traits])
    cols = ", ".join(quote(c) for c in ["id", "received_at", "uuid_ts", *traits])
    return [
        f"DROP TABLE IF EXISTS {scratch};",
        f"CREATE TEMP TABLE {scratch} AS\nSELECT\n    {merged}\nFROM (\n    SELECT DISTINCT\n        i.user_id AS id, "
        f"i.uuid_ts,\n        {latest}\n    FROM {quote(identifies.schema)}.{quote(identifies.table)} AS i\n"
        f"    WHERE i.user_id IS NOT NULL AND i.id IN (SELECT b.message_id FROM {batch} AS b "
        f"WHERE b.source = {literal(tp.source, dialect)} AND b.type = 'identify')\n) AS n\n"
        f"LEFT JOIN {target} AS u ON u.id = n.id;",
        f"DELETE FROM {target} WHERE id IN (SELECT id FROM {scratch});",
        f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {scratch};",
        f"DROP TABLE {scratch};",
    ]
