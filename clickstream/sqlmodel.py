"""The warehouse model: ``sql/redshift`` is the single source; DuckDB runs it transpiled by sqlglot.

Statements are read from the files in name order, ``${name}`` placeholders are filled from
:class:`ModelNames`, and for DuckDB each statement is transpiled from the Redshift dialect, with
Redshift's limits compiled in as checks (:mod:`clickstream.redshift_rules`), and PartiQL paths into
SUPER values (``r.d."message"."userId"``) turned into DuckDB JSON extraction. The few Redshift-only
statements (external schema, streaming view, REFRESH, stored procedures) are replaced locally by
``sql/duckdb``: the loader fills a table with the streaming view's columns instead, and
``sql/duckdb/<phase>/<file>`` replaces the Redshift file of the same name.

File markers (a line in the file): ``-- clickstream: migration`` runs each statement once per
warehouse, recorded in ``schema_migrations`` (on Redshift through the ``apply_migration``
procedure); ``-- clickstream: transaction`` groups consecutive statements into one transaction;
``-- clickstream: skip-if-exists`` and ``-- clickstream: redshift-only`` as described below.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from clickstream import redshift_rules

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
PHASES = ("setup", "refresh")
# Statements that only make sense on Redshift; sql/duckdb holds what replaces them locally.
REDSHIFT_ONLY = frozenset({"setup/010_external_schema.sql", "setup/070_streaming_view.sql",
                           "refresh/010_refresh_view.sql"})
STREAMING_VIEW_FILE = "setup/070_streaming_view.sql"
# Placeholders of sql/duckdb/refresh files that the local warehouse fills in at run time with
# literals (what the Redshift procedures read before running the statement).
RUNTIME_PLACEHOLDERS = frozenset({"watermark", "recent_since"})
# A file holding this marker is Redshift-only as well (e.g. GRANTs): the local model skips it.
REDSHIFT_ONLY_MARKER = "-- clickstream: redshift-only"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,126}$")


@dataclass(frozen=True)
class ModelNames:
    """Names the SQL is written against (``cdk.json`` keys in parentheses)."""

    schema: str = "clickstream"  # clickstreamSchema
    mv: str = "clickstream_stream"  # clickstreamMaterializedView
    kinesis_schema: str = "kinesis"  # kinesisSchema
    stream_name: str = "clickstream-events"
    iam_role: str = "default"
    # The database role BI tools and dbt read through (granted by setup on Redshift).
    reader_role: str = "clickstream_reader"
    # How far back (days of received_at) the merge looks for an earlier copy of a message.
    dedup_window_days: int = 3

    def values(self) -> dict[str, str]:
        return {k: str(getattr(self, k)) for k in self.__dataclass_fields__}

    def validate(self) -> list[str]:
        errors = [f"{k} {v!r} must be a lower-case SQL identifier"
                  for k, v in (("schema", self.schema), ("mv", self.mv), ("kinesis_schema", self.kinesis_schema),
                                 ("reader_role", self.reader_role))
                  if not _IDENTIFIER.match(v)]
        if not re.match(r"^[A-Za-z0-9_.-]{1,128}$", self.stream_name):
            errors.append(f"stream_name {self.stream_name!r} is not a Kinesis stream name")
        elif self.stream_name != self.stream_name.lower():
            # The streaming view names the stream as a quoted identifier, which Redshift folds to
            # lower case (setup does not turn enable_case_sensitive_identifier on):
            # https://docs.aws.amazon.com/redshift/latest/dg/materialized-view-streaming-ingestion-getting-started.html
            errors.append(f"stream_name {self.stream_name!r} must be lower case: Redshift streaming ingestion "
                          "reads the stream by a name it folds to lower case")
        if "'" in self.iam_role:
            errors.append("iam_role must not contain quotes")
        if not (isinstance(self.dedup_window_days, int) and 1 <= self.dedup_window_days <= 365):
            errors.append(f"dedup_window_days {self.dedup_window_days!r} must be a whole number of days, 1 to 365")
        return errors


SKIP_IF_EXISTS = "-- clickstream: skip-if-exists"
# Each statement of a file holding this marker runs once per warehouse (see module docstring).
MIGRATION = "-- clickstream: migration"
# Consecutive statements from files holding this marker are sent as one BatchExecuteStatement,
# which the Data API runs as one transaction (all or nothing).
TRANSACTION = "-- clickstream: transaction"


@dataclass(frozen=True)
class Statement:
    name: str  # e.g. "setup/040_tables.sql#2"
    sql: str
    # The workflow treats "already exists" as done (for statements with no IF NOT EXISTS form).
    skip_if_exists: bool = False
    # Part of the transaction formed by the consecutive statements that also have it set.
    transaction: bool = False
    # Not part of the local (DuckDB) model.
    redshift_only: bool = False
    # For a migration statement: its name in schema_migrations (e.g. "m002_rename_raw#1"), the
    # checksum of its text, and the statement itself (``sql`` runs it through apply_migration).
    migration: str = ""
    checksum: str = ""
    body: str = ""


def fill(text: str, names: ModelNames, extra: dict[str, str] | None = None,
         keep: frozenset[str] = frozenset()) -> str:
    """Fill ``${name}`` placeholders; ``keep`` names are left for the caller to fill later."""
    values = {**names.values(), **(extra or {})}

    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key in keep:
            return match.group(0)
        if key not in values:
            raise KeyError(f"unknown placeholder ${{{key}}}")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def checksum(sql: str) -> str:
    """MD5 of a statement without its comments and with whitespace collapsed (edits to comments or
    layout do not count as a change)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return hashlib.md5(" ".join(" ".join(lines).split()).encode()).hexdigest()


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def split_statements(text: str) -> list[str]:
    """Split a file on semicolons that end a line (our SQL files keep one statement per block),
    except inside a ``$$ ... $$`` body (stored procedures and functions)."""
    parts: list[str] = []
    current: list[str] = []
    in_body = False
    for line in text.splitlines():
        if line.count("$$") % 2:
            in_body = not in_body
        current.append(line)
        if not in_body and re.search(r";[ \t]*$", line):
            parts.append("\n".join(current))
            current = []
    parts.append("\n".join(current))
    out = []
    for part in parts:
        body = "\n".join(line for line in part.splitlines() if not line.strip().startswith("--")).strip()
        if body:
            out.append(re.sub(r";[ \t]*$", "", part.strip()) + ";")
    return out


def files(phase: str, dialect: str = "redshift") -> list[Path]:
    return sorted((SQL_DIR / dialect / phase).glob("*.sql"))


def migration_name(path: Path) -> str:
    """``051_m002_rename_raw.sql`` -> ``m002_rename_raw`` (the file's order prefix is not part of it)."""
    return path.stem.split("_", 1)[1]


def streaming_view_checksum(names: ModelNames) -> str:
    text = (SQL_DIR / "redshift" / STREAMING_VIEW_FILE).read_text()
    return checksum("\n".join(split_statements(fill(text, names))))


def redshift_statements(phase: str, names: ModelNames) -> list[Statement]:
    """What the Step Functions workflows send to the Redshift Data API, in order."""
    out = []
    extra = {"streaming_view_checksum": streaming_view_checksum(names)} if phase == "setup" else {}
    for path in files(phase):
        text = path.read_text()
        for i, sql in enumerate(split_statements(fill(text, names, extra)), 1):
            name = f"{phase}/{path.name}"
            flags: dict[str, Any] = dict(skip_if_exists=SKIP_IF_EXISTS in text, transaction=TRANSACTION in text,
                                         redshift_only=name in REDSHIFT_ONLY or REDSHIFT_ONLY_MARKER in text)
            if MIGRATION in text:
                step, digest = f"{migration_name(path)}#{i}", checksum(sql)
                body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
                call = (f"CALL {names.schema}.apply_migration({_sql_literal(step)}, {_sql_literal(digest)}, "
                        f"{_sql_literal(body)});")
                out.append(Statement(f"{name}#{i}", call, migration=step, checksum=digest, body=sql, **flags))
            else:
                out.append(Statement(f"{name}#{i}", sql, **flags))
    return out


def _redshift_semantics(node: exp.Expr) -> exp.Expr:
    """Fix-ups where DuckDB's function of the same name means something else, and Redshift's limits
    compiled in as checks (the macros are in ``sql/duckdb/setup/000_functions.sql``)."""
    if isinstance(node, exp.RegexpReplace) and not node.args.get("modifiers"):
        node.set("modifiers", exp.Literal.string("g"))  # Redshift replaces every match
    if isinstance(node, exp.Anonymous) and node.name.upper() == "OCTET_LENGTH":
        return exp.func("strlen", *node.expressions)  # bytes of a VARCHAR
    if isinstance(node, exp.Anonymous) and node.name.upper() == "FROM_VARBYTE" \
            and isinstance(node.expressions[0], exp.Substring):
        sub = node.expressions[0]  # DuckDB has no SUBSTRING for BLOB
        return exp.func("from_varbyte_substring", sub.this, sub.args["start"], sub.args["length"],
                        *node.expressions[1:])
    if isinstance(node, (exp.DateAdd, exp.TsOrDsAdd, exp.TimestampAdd)):
        node.set("expression", exp.func("redshift_int32", node.expression))  # DATEADD's INTEGER
    if isinstance(node, exp.Mul) and isinstance(node.expression, exp.Interval) \
            and node.expression.name == "1" and node.expression.unit is not None \
            and node.expression.unit.name.upper() == "MILLISECOND":
        # n * INTERVAL '1 millisecond' with a BIGINT n: DuckDB's interval product is 32-bit
        return exp.func("to_microseconds", exp.Mul(this=exp.paren(node.this), expression=exp.Literal.number(1000)))
    return node


def _json_path(parts: list[exp.Identifier]) -> exp.Expr:
    """``alias.column."a"."b"`` as DuckDB's ``json_extract(alias.column, '$."a"."b"')``."""
    path = "$" + "".join('."' + part.name.replace('"', '\\"') + '"' for part in parts[2:])
    return exp.Anonymous(this="json_extract", expressions=[exp.column(parts[1].name, table=parts[0].name),
                                                             exp.Literal.string(path)])


# SUPER type information functions applied to a path, as tests of the value's first character:
# json_extract writes values minified, so that character tells the type, and reading it is several
# times cheaper than json_type, which parses the value again. The same functions applied to a column
# (whose JSON text may start with whitespace) are the exact macros of sql/duckdb/setup/000_functions.sql.
# https://docs.aws.amazon.com/redshift/latest/dg/c_Type_Info_Functions.html
_FIRST_CHARACTER_TESTS = {"IS_VARCHAR": ('"',), "IS_OBJECT": ("{",), "IS_ARRAY": ("[",), "IS_BOOLEAN": ("t", "f")}
# JSON_TYPEOF(path) = '<type>' the same way (JSON_TYPEOF's values: r_json_typeof.html).
_JSON_TYPEOF_FIRST_CHARACTERS = {"string": ('"',), "object": ("{",), "array": ("[",), "boolean": ("t", "f"),
                                 "null": ("n",), "number": ("-", *"0123456789")}


def _super_navigation(node: exp.Expr) -> exp.Expr:
    """PartiQL paths into SUPER values as DuckDB JSON extraction, with Redshift's meaning: a missing
    attribute is NULL (lax mode), and ``CAST(path AS VARCHAR)`` is the string a SUPER string holds
    (NULL for any other type; ``super_varchar`` in sql/duckdb/setup/000_functions.sql).
    https://docs.aws.amazon.com/redshift/latest/dg/query-super.html"""
    if isinstance(node, exp.Case) and len(node.args.get("ifs") or []) == 1 and not node.args.get("default"):
        # CASE WHEN IS_VARCHAR(p) THEN p::VARCHAR END (or NULLIF(p::VARCHAR, '')): the cast alone
        # says the same here, since it is NULL for anything but a string
        test, value = node.args["ifs"][0].this, node.args["ifs"][0].args["true"]
        cast = value.this if isinstance(value, exp.Nullif) else value
        if isinstance(test, exp.Anonymous) and test.name.upper() == "IS_VARCHAR" and isinstance(cast, exp.Cast) \
                and redshift_rules.path_parts(cast.this) is not None and test.expressions[0] == cast.this:
            return value.transform(_super_navigation)
    if isinstance(node, exp.Cast) and node.to.this in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT):
        parts = redshift_rules.path_parts(node.this)
        if parts is not None:
            return exp.func("super_varchar", _json_path(parts))
    if isinstance(node, exp.EQ) and isinstance(node.this, exp.Anonymous) and node.this.name.upper() == "JSON_TYPEOF" \
            and isinstance(node.expression, exp.Literal) and node.expression.name in _JSON_TYPEOF_FIRST_CHARACTERS:
        parts = redshift_rules.path_parts(node.this.expressions[0])
        if parts is not None:
            first = exp.func("super_first", _json_path(parts))
            return exp.In(this=first, expressions=[exp.Literal.string(c)
                                                   for c in _JSON_TYPEOF_FIRST_CHARACTERS[node.expression.name]])
    if isinstance(node, exp.Anonymous) and len(node.expressions) == 1:
        parts = redshift_rules.path_parts(node.expressions[0])
        name = node.name.upper()
        if parts is not None and name in _FIRST_CHARACTER_TESTS:
            first = exp.func("super_first", _json_path(parts))
            return exp.In(this=first, expressions=[exp.Literal.string(c) for c in _FIRST_CHARACTER_TESTS[name]])
        if parts is not None and name == "JSON_TYPEOF":
            return exp.func("super_typeof", _json_path(parts))
    if isinstance(node, exp.Column | exp.Dot) and not isinstance(node.parent, exp.Dot):
        parts = redshift_rules.path_parts(node)
        if parts is not None:
            return _json_path(parts)
    return node


def _one_parse_per_object(tree: exp.Expr) -> exp.Expr:
    """DuckDB parses JSON text once per extraction; where one SELECT extracts several paths from the
    same column, extract them all with one ``json_extract_string(col, [paths])`` in a subquery.

    Same results (both return NULL for a missing path or JSON null, and JSON text for objects),
    several times faster on the model's view, which reads ~60 values per record.
    """
    counter = 0
    for select in list(tree.find_all(exp.Select)):
        source = select.args.get("from_")
        if source is None or select.args.get("joins") or not isinstance(source.this, exp.Table):
            continue
        groups: dict[tuple[type, str], list[exp.JSONExtract | exp.JSONExtractScalar]] = {}
        for projection in select.expressions:
            for node in projection.find_all(exp.JSONExtractScalar, exp.JSONExtract):
                if isinstance(node.this, exp.Column) and node.find_ancestor(exp.Select) is select:
                    groups.setdefault((type(node), node.this.sql()), []).append(node)
        for (kind, _), nodes in groups.items():
            paths = list(dict.fromkeys(n.expression.sql() for n in nodes))  # a path read twice, extracted once
            if len(nodes) < 2 or (kind is exp.JSONExtract and len(paths) < 2):
                continue  # one path: extracted where it is used, so a CASE evaluates it only when it must
            counter += 1
            name = f"__json_{counter}"
            table = select.args["from_"].this
            alias = table.alias_or_name
            if kind is exp.JSONExtractScalar:  # JSON_EXTRACT_PATH_TEXT: text, Redshift's 64 KB input limit
                extract = exp.func("json_extract_string", exp.func("redshift_json_text", nodes[0].this.copy()),
                                   exp.Array(expressions=[n.expression.copy() for n in nodes]))
                paths = [n.expression.sql() for n in nodes]
            else:  # SUPER navigation: JSON values
                extract = exp.func("json_extract", nodes[0].this.copy(),
                                   exp.Array(expressions=[sqlglot.parse_one(p, read="duckdb") for p in paths]))
            inner = exp.select(exp.Star(), extract.as_(name)).from_(table.copy())
            select.args["from_"].set("this", inner.subquery(alias))
            for node in nodes:
                i = paths.index(node.expression.sql()) + 1 if kind is exp.JSONExtract else nodes.index(node) + 1
                node.replace(exp.func("list_extract", exp.column(name, table=alias), exp.Literal.number(i)))
    for node in list(tree.find_all(exp.JSONExtractScalar)):  # the others: Redshift's 64 KB input limit
        node.set("this", exp.func("redshift_json_text", node.this))
    return tree


def _check_widths(tree: exp.Expr, widths: dict[str, dict[str, int]]) -> exp.Expr:
    """INSERT INTO t (cols) SELECT ...: each VARCHAR(n) value checked against n bytes, as Redshift
    does ("value too long"), instead of DuckDB's silent acceptance."""
    if not isinstance(tree, exp.Insert) or not isinstance(tree.this, exp.Schema):
        return tree
    table = tree.this.this.name
    select = tree.expression
    if table not in widths or not isinstance(select, exp.Select):
        return tree
    columns = [c.name for c in tree.this.expressions]
    for column, projection in zip(columns, list(select.expressions), strict=True):
        width = widths[table].get(column)
        if width is not None:
            projection.replace(exp.func("redshift_varchar", projection.copy(), exp.Literal.number(width),
                                        exp.Literal.string(f"{table}.{column}")))
    return tree


@lru_cache(maxsize=1)
def model_widths() -> dict[str, dict[str, int]]:
    """Table -> VARCHAR column -> byte width, from the model's CREATE TABLE and ADD COLUMN statements."""
    widths: dict[str, dict[str, int]] = {}
    for stmt in redshift_statements("setup", ModelNames()):
        if not re.search(r"^\s*(CREATE TABLE|ALTER TABLE)", stmt.body or stmt.sql, re.M):
            continue
        tree = redshift_rules.parse(stmt.body or stmt.sql)
        target = tree.find(exp.Table)
        if isinstance(tree, exp.Create | exp.Alter) and target is not None:
            table = widths.setdefault(target.name, {})
            table.update(redshift_rules.varchar_widths(tree))
            for rename in tree.find_all(exp.RenameColumn):
                if rename.this.name in table:
                    table[rename.args["to"].name] = table.pop(rename.this.name)
    return widths


@lru_cache(maxsize=256)
def transpile(sql: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = sqlglot.parse_one(sql, read="redshift").transform(_super_navigation).transform(_redshift_semantics)
        tree = _check_widths(tree, model_widths())
        tree = sqlglot.parse_one(tree.sql(dialect="duckdb", unsupported_level=sqlglot.ErrorLevel.IGNORE),
                                 read="duckdb")
        return _one_parse_per_object(tree).sql(dialect="duckdb", unsupported_level=sqlglot.ErrorLevel.IGNORE)


_FUNCTION = re.compile(r"CREATE OR REPLACE FUNCTION (\w+)\(([^)]*(?:\([^)]*\)[^)]*)*)\).*?\$\$(.*)\$\$", re.S)


def function_as_macro(sql: str) -> str:
    """A Redshift scalar SQL UDF (``$1``, ``$2`` arguments) as the DuckDB macro with the same body."""
    match = _FUNCTION.search(sql)
    if match is None:
        raise ValueError(f"not a scalar SQL function: {sql[:80]}")
    name, body = match.group(1), match.group(3)
    tree = sqlglot.parse_one(body, read="redshift")

    def arguments(node: exp.Expr) -> exp.Expr:
        return exp.column(f"a{node.name}") if isinstance(node, exp.Parameter) else node

    def integer_division(node: exp.Expr) -> exp.Expr:  # INTEGER / INTEGER in Redshift
        return exp.IntDiv(this=node.this, expression=node.expression) if isinstance(node, exp.Div) else node

    expr = tree.expressions[0].transform(arguments).transform(integer_division).transform(_redshift_semantics)
    count = len(set(re.findall(r"\$(\d+)", body)))
    args = ", ".join(f"a{i}" for i in range(1, count + 1))
    return f"CREATE OR REPLACE MACRO {name}({args}) AS {expr.sql(dialect='duckdb')};"


def duckdb_statements(phase: str, names: ModelNames) -> list[Statement]:
    """The same model for DuckDB: Redshift statements transpiled, Redshift-only ones left out, and
    ``sql/duckdb/<phase>/<file>`` in place of the Redshift file of the same name."""
    local = {path.name: path for path in files(phase, "duckdb")}
    extras: list[Statement] = []
    for path in local.values():
        if not (SQL_DIR / "redshift" / phase / path.name).exists():  # additions, run after the schema
            for i, sql in enumerate(split_statements(fill(path.read_text(), names)), 1):
                extras.append(Statement(f"duckdb/{phase}/{path.name}#{i}", sql))
    out: list[Statement] = []
    replaced: set[str] = set()
    for stmt in redshift_statements(phase, names):
        file = stmt.name.split("/", 1)[1].split("#")[0]
        if file in local:
            if file not in replaced:
                replaced.add(file)
                text = local[file].read_text()
                out += [Statement(f"duckdb/{phase}/{file}#{i}", sql, transaction=stmt.transaction)
                        for i, sql in enumerate(split_statements(fill(text, names, keep=RUNTIME_PLACEHOLDERS)), 1)]
            continue
        if stmt.redshift_only:
            continue
        source = stmt.body or stmt.sql
        if source.lstrip().upper().startswith("CREATE OR REPLACE FUNCTION") or "\nCREATE OR REPLACE FUNCTION" in source:
            sql = function_as_macro(source)
        else:
            # A Redshift TEMP table ends with the Data API session; the local connection lives on.
            sql = transpile(source).replace("CREATE TEMPORARY TABLE", "CREATE OR REPLACE TEMPORARY TABLE", 1)
        out.append(Statement(stmt.name, sql, transaction=stmt.transaction, migration=stmt.migration,
                             checksum=stmt.checksum, body=stmt.body))
    if phase == "setup":
        # duckdb/ additions must come after the schema exists and before the rest.
        at = next(i for i, s in enumerate(out) if s.name.startswith("setup/020_schema")) + 1
        out[at:at] = extras
    else:
        out += extras
    return out
