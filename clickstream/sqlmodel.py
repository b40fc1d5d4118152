"""The warehouse model: ``sql/redshift`` is the single source; DuckDB runs it transpiled by sqlglot.

Statements are read from the files in name order, ``${name}`` placeholders are filled from
:class:`ModelNames`, and for DuckDB each statement is transpiled from the Redshift dialect. The few
Redshift-only statements (external schema, streaming view, REFRESH) are replaced locally by
``sql/duckdb``: the loader fills a table with the streaming view's columns instead.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlglot
from sqlglot import exp

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
PHASES = ("setup", "refresh")
# Statements that only make sense on Redshift; sql/duckdb holds what replaces them locally.
REDSHIFT_ONLY = frozenset({"setup/010_external_schema.sql", "setup/030_streaming_view.sql",
                           "refresh/010_refresh_view.sql"})
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

    def values(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def validate(self) -> list[str]:
        errors = [f"{k} {v!r} must be a lower-case SQL identifier"
                  for k, v in (("schema", self.schema), ("mv", self.mv), ("kinesis_schema", self.kinesis_schema),
                                 ("reader_role", self.reader_role))
                  if not _IDENTIFIER.match(v)]
        if not re.match(r"^[A-Za-z0-9_.-]{1,128}$", self.stream_name):
            errors.append(f"stream_name {self.stream_name!r} is not a Kinesis stream name")
        if "'" in self.iam_role:
            errors.append("iam_role must not contain quotes")
        return errors


SKIP_IF_EXISTS = "-- clickstream: skip-if-exists"
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


def fill(text: str, names: ModelNames) -> str:
    values = names.values()

    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"unknown placeholder ${{{key}}}")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def split_statements(text: str) -> list[str]:
    """Split a file on semicolons that end a line (our SQL files keep one statement per block)."""
    parts = re.split(r";[ \t]*(?:\n|$)", text)
    out = []
    for part in parts:
        body = "\n".join(line for line in part.splitlines() if not line.strip().startswith("--")).strip()
        if body:
            out.append(part.strip() + ";")
    return out


def files(phase: str, dialect: str = "redshift") -> list[Path]:
    return sorted((SQL_DIR / dialect / phase).glob("*.sql")) if dialect == "redshift" else sorted(
        (SQL_DIR / "duckdb").glob("*.sql"))


def redshift_statements(phase: str, names: ModelNames) -> list[Statement]:
    """What the Step Functions workflows send to the Redshift Data API, in order."""
    out = []
    for path in files(phase):
        text = path.read_text()
        for i, sql in enumerate(split_statements(fill(text, names)), 1):
            name = f"{phase}/{path.name}"
            out.append(Statement(f"{name}#{i}", sql, skip_if_exists=SKIP_IF_EXISTS in text,
                                 transaction=TRANSACTION in text,
                                 redshift_only=name in REDSHIFT_ONLY or REDSHIFT_ONLY_MARKER in text))
    return out


def _redshift_semantics(node: exp.Expression) -> exp.Expression:
    """Fix-ups where DuckDB's function of the same name means something else."""
    if isinstance(node, exp.RegexpReplace) and not node.args.get("modifiers"):
        node.set("modifiers", exp.Literal.string("g"))  # Redshift replaces every match
    return node


def _one_parse_per_object(tree: exp.Expression) -> exp.Expression:
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
        groups: dict[str, list[exp.JSONExtractScalar]] = {}
        for projection in select.expressions:
            for node in projection.find_all(exp.JSONExtractScalar):
                if isinstance(node.this, exp.Column) and node.find_ancestor(exp.Select) is select:
                    groups.setdefault(node.this.sql(), []).append(node)
        for nodes in groups.values():
            if len(nodes) < 2:
                continue
            counter += 1
            name = f"__json_{counter}"
            table = select.args["from_"].this
            alias = table.alias_or_name
            extract = exp.func("json_extract_string", nodes[0].this.copy(),
                               exp.Array(expressions=[n.expression.copy() for n in nodes]))
            inner = exp.select(exp.Star(), extract.as_(name)).from_(table.copy())
            select.args["from_"].set("this", inner.subquery(alias))
            for i, node in enumerate(nodes, 1):
                node.replace(exp.func("list_extract", exp.column(name, table=alias), exp.Literal.number(i)))
    return tree


@lru_cache(maxsize=256)
def transpile(sql: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = sqlglot.parse_one(sql, read="redshift").transform(_redshift_semantics)
        tree = sqlglot.parse_one(tree.sql(dialect="duckdb", unsupported_level=sqlglot.ErrorLevel.IGNORE),
                                 read="duckdb")
        return _one_parse_per_object(tree).sql(dialect="duckdb", unsupported_level=sqlglot.ErrorLevel.IGNORE)


def duckdb_statements(phase: str, names: ModelNames) -> list[Statement]:
    """The same model for DuckDB: Redshift statements transpiled, Redshift-only ones replaced."""
    out: list[Statement] = []
    if phase == "setup":
        for path in files(phase, "duckdb"):
            for i, sql in enumerate(split_statements(fill(path.read_text(), names)), 1):
                out.append(Statement(f"duckdb/{path.name}#{i}", sql))
    staging = f"{names.schema}.staging"
    for stmt in redshift_statements(phase, names):
        if stmt.redshift_only:
            continue
        sql = transpile(stmt.sql)
        # Locally the per-run snapshot lives in memory: a TEMP table is never written to the file,
        # which roughly halves what each merge makes DuckDB checkpoint.
        sql = sql.replace(f"CREATE TABLE {staging}", "CREATE TEMP TABLE staging").replace(staging, "temp.main.staging")
        out.append(Statement(stmt.name, sql))
    if phase == "setup":
        # duckdb/ files must come after the schema exists: schema first, then the rest in order.
        out.sort(key=lambda s: (0 if s.name.startswith("setup/020_schema") else 1))
    return out
