"""What Redshift refuses and DuckDB accepts, in one place, so the local model refuses it too.

The warehouse SQL is written for Redshift and tested on DuckDB. DuckDB is lenient where Redshift is
strict; a model that passes locally could still fail on Redshift, either at setup (a reserved word)
or, worse, on one record during a merge (a value too long for its column), which stops every later
merge. These rules are applied to the SQL (lint) and, where they depend on data, compiled into the
DuckDB statements as checks that raise Redshift's error instead of silently accepting the value.

Sources (Amazon Redshift Database Developer Guide):
- reserved words: https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html
- VARCHAR(n) counts bytes, max 65,535; a longer value is an error on INSERT:
  https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html
- JSON_EXTRACT_PATH_TEXT input at most 64 KB:
  https://docs.aws.amazon.com/redshift/latest/dg/JSON_EXTRACT_PATH_TEXT.html
- JSON_SERIALIZE fails beyond the VARCHAR limit: https://docs.aws.amazon.com/redshift/latest/dg/JSON_SERIALIZE.html
- SUPER: a string value is at most 65,535 bytes, duplicate keys are invalid:
  https://docs.aws.amazon.com/redshift/latest/dg/limitations-super.html
- DATEADD's interval is an INTEGER: https://docs.aws.amazon.com/redshift/latest/dg/r_DATEADD_function.html
- VARCHAR without a length is VARCHAR(256) in a table; in an expression its width comes from the
  input (r_Character_types), which a SUPER value does not give: casts in CREATE TABLE AS say a length
- parse JSON once (JSON_PARSE into SUPER) and navigate it with PartiQL paths:
  https://docs.aws.amazon.com/redshift/latest/dg/query-super.html; an attribute name keeps its case
  only double-quoted with enable_case_sensitive_identifier on, else it is folded to lower case and
  a camelCase attribute is never found: https://docs.aws.amazon.com/redshift/latest/dg/super-configurations.html
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

# Copied from r_pg_keywords (see above), in the page's order.
RESERVED_WORDS = frozenset("""
AES128 AES256 ALL ALLOWOVERWRITE ANALYSE ANALYZE AND ANY ARRAY AS ASC AUTHORIZATION AZ64 BACKUP BETWEEN
BINARY BLANKSASNULL BOTH BYTEDICT BZIP2 CASE CAST CHECK COLLATE COLUMN CONSTRAINT CREATE CREDENTIALS
CROSS CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURRENT_USER_ID DEFAULT DEFERRABLE
DEFLATE DEFRAG DELTA DELTA32K DESC DISABLE DISTINCT DO ELSE EMPTYASNULL ENABLE ENCODE ENCRYPT ENCRYPTION
END EXCEPT EXPLICIT FALSE FOR FOREIGN FREEZE FROM FULL GLOBALDICT256 GLOBALDICT64K GRANT GROUP GZIP
HAVING IDENTITY IGNORE ILIKE IN INITIALLY INNER INTERSECT INTERVAL INTO IS ISNULL JOIN LEADING LEFT LIKE
LIMIT LOCALTIME LOCALTIMESTAMP LUN LUNS LZO LZOP MINUS MOSTLY16 MOSTLY32 MOSTLY8 NATURAL NEW NOT NOTNULL
NULL NULLS OFF OFFLINE OFFSET OID OLD ON ONLY OPEN OR ORDER OUTER OVERLAPS PARALLEL PARTITION PERCENT
PERMISSIONS PIVOT PLACING PRIMARY RAW READRATIO RECOVER REFERENCES REJECTLOG RESORT RESPECT RESTORE
RIGHT SELECT SESSION_USER SIMILAR SNAPSHOT SOME SYSDATE SYSTEM TABLE TAG TDES TEXT255 TEXT32K THEN
TIMESTAMP TO TOP TRAILING TRUE TRUNCATECOLUMNS UNION UNIQUE UNNEST UNPIVOT USER USING VERBOSE WALLET
WHEN WHERE WITH WITHOUT
""".split())  # noqa: SIM905 (the page's text, as is)
# Reserved words the model may use as identifiers, always double-quoted: Segment's column name,
# and the name `rejected.raw_record` had until migration m002 renamed it (quoted in m001 and m002).
QUOTED_RESERVED_ALLOWED = frozenset({"timestamp", "raw"})
# Reserved words sqlglot tokenizes as plain words where they are keywords (RENAME ... TO, TRIM(BOTH ...)).
_KEYWORD_USES = frozenset({"TO", "BOTH", "LEADING", "TRAILING"})

MAX_VARCHAR_BYTES = 65_535  # VARCHAR(n) and SUPER string values
MAX_JSON_TEXT_BYTES = 65_535  # JSON_EXTRACT_PATH_TEXT input, JSON_SERIALIZE output
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # DATEADD interval

# The model's own limit on a whole record: larger records are rejected (`record_too_large`) without
# being serialised or navigated, so no JSON function ever sees more than MAX_JSON_TEXT_BYTES. The
# margin covers re-serialisation differences (escapes, number formats) of JSON_SERIALIZE.
MAX_RECORD_BYTES = 64_000
# Non-JSON records are kept in `rejected` as hex of at most this many leading bytes (hex doubles).
MAX_HEX_BYTES = 32_000


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The model's byte-safe truncation (``clickstream_truncate`` in SQL), as a reference.

    The longest of LEFT(s, n), LEFT(s, n/2), LEFT(s, n/3), LEFT(s, n/4) characters that fits in n
    bytes: never splits a character, never exceeds n bytes, keeps n characters of ASCII text.
    """
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    for divisor in (1, 2, 3, 4):
        candidate = text[: max_bytes // divisor]
        if len(candidate.encode("utf-8")) <= max_bytes:
            return candidate
    raise AssertionError("unreachable: a UTF-8 character is at most 4 bytes")


def not_super_json(text: str) -> bool:
    """True for text DuckDB reads as JSON that SUPER does not accept: an object repeating a key (not
    valid SUPER, CAN_JSON_PARSE false), or NaN / Infinity, which are not JSON (RFC 8259) though
    DuckDB's reader takes them. The streaming view keeps such a record's bytes instead."""
    refused = False

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict:
        nonlocal refused
        if len({k for k, _ in pairs}) != len(pairs):
            refused = True
        return dict(pairs)

    def constant_hook(name: str) -> float:
        nonlocal refused
        refused = True
        return 0.0

    try:
        json.loads(text, object_pairs_hook=pairs_hook, parse_constant=constant_hook)
    except (ValueError, RecursionError):
        return False
    return refused


@dataclass(frozen=True)
class Violation:
    statement: str
    message: str

    def __str__(self) -> str:
        return f"{self.statement}: {self.message}"


def parse(sql: str) -> exp.Expr:
    """Parse with sqlglot's Redshift dialect; unparseable SQL raises."""
    return sqlglot.parse_one(sql, read="redshift", error_level=sqlglot.ErrorLevel.RAISE)


def reserved_identifiers(sql: str) -> list[str]:
    """Identifiers Redshift would read as reserved words: unquoted ones, and quoted ones not allowed.

    Token-level, so it also covers statements sqlglot keeps as commands (CALL, REFRESH) and the
    bodies of stored procedures and functions (``$$ ... $$``), which are linted as SQL text too.
    """
    from sqlglot.dialects.redshift import Redshift
    from sqlglot.tokens import TokenType

    bad = []
    texts = [sql, *re.findall(r"\$\$(.*?)\$\$", sql, re.S)]
    for text in texts:
        tokens = Redshift().tokenize(re.sub(r"\$\$.*?\$\$", "''", text, flags=re.S) if text is sql else text)
        if len(tokens) == 2 and tokens[0].token_type == TokenType.COMMAND:  # CALL/REFRESH: the rest is one token
            tokens = [tokens[0], *Redshift().tokenize(tokens[1].text)]
        for i, token in enumerate(tokens):
            word = token.text
            if word.upper() not in RESERVED_WORDS:
                continue
            called = i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.L_PAREN  # CAST(...)
            if token.token_type == TokenType.VAR and not called and word.upper() not in _KEYWORD_USES:
                bad.append(word)
            elif token.token_type == TokenType.IDENTIFIER and word.lower() not in QUOTED_RESERVED_ALLOWED:
                bad.append(f'"{word}"')
    return bad


def varchar_widths(tree: exp.Expr) -> dict[str, int]:
    """Column -> byte width for the VARCHAR(n) columns a CREATE TABLE or ALTER TABLE ADD COLUMN declares."""
    widths = {}
    for col in tree.find_all(exp.ColumnDef):
        kind = col.args.get("kind")
        if isinstance(kind, exp.DataType) and kind.this in (exp.DataType.Type.VARCHAR, exp.DataType.Type.CHAR):
            params = kind.expressions
            widths[col.name] = int(params[0].name) if params else 256  # Redshift's default width
    return widths


# Statements sqlglot keeps as a generic command: their form is checked by these patterns instead.
COMMAND_FORMS = (
    re.compile(r"^CALL \w+\.\w+\((?:'(?:[^']|'')*'|\d+|, )*\)$", re.S),
    re.compile(r"^REFRESH MATERIALIZED VIEW \w+\.\w+$"),
    re.compile(r"^CREATE EXTERNAL SCHEMA IF NOT EXISTS \w+\s+FROM KINESIS\s+IAM_ROLE '[^']*'$"),
    re.compile(r"^CREATE OR REPLACE (PROCEDURE|FUNCTION) \w+(\.\w+)?\(.*\$\$ LANGUAGE (plpgsql|sql)$", re.S),
    # Role grants (setup/900_grants.sql): r_CREATE_ROLE, r_GRANT, r_ALTER_DEFAULT_PRIVILEGES.
    re.compile(r"^CREATE ROLE \w+$"),
    re.compile(r"^GRANT SELECT ON ALL TABLES IN SCHEMA \w+ TO ROLE \w+$"),
    re.compile(r"^ALTER DEFAULT PRIVILEGES IN SCHEMA \w+ GRANT SELECT ON TABLES TO ROLE \w+$"),
)
_DATEADD = (exp.DateAdd, exp.TsOrDsAdd, exp.TimestampAdd)
# Functions that parse JSON text: the merge reads records the streaming view parsed once into SUPER.
JSON_TEXT_FUNCTIONS = frozenset({"JSON_EXTRACT_PATH_TEXT", "JSON_EXTRACT_ARRAY_ELEMENT_TEXT", "JSON_PARSE",
                                 "CAN_JSON_PARSE", "IS_VALID_JSON", "IS_VALID_JSON_ARRAY"})


def path_parts(node: exp.Expr) -> list[exp.Identifier] | None:
    """The parts of a PartiQL path (``alias.column."a"."b"``: a column reference of more than two
    parts, the model's only way of writing one; sqlglot reads it as catalog.db.table.column and Dot),
    else None."""
    parts: list[exp.Expr]
    if isinstance(node, exp.Column):
        parts = list(node.parts)
    elif isinstance(node, exp.Dot) and isinstance(node.this, exp.Column | exp.Dot):
        base: list[exp.Expr] | None = list(node.this.parts) if isinstance(node.this, exp.Column) else None
        if isinstance(node.this, exp.Dot):
            inner = path_parts(node.this)
            base = None if inner is None else list(inner)
        if base is None:
            return None
        parts = [*base, node.expression]
    else:
        return None
    identifiers = [p for p in parts if isinstance(p, exp.Identifier)]
    return identifiers if len(parts) > 2 and len(identifiers) == len(parts) else None


def super_paths(tree: exp.Expr) -> list[list[exp.Identifier]]:
    """Every PartiQL path in a statement (outermost nodes only)."""
    found = (path_parts(node) for node in tree.find_all(exp.Column, exp.Dot) if not isinstance(node.parent, exp.Dot))
    return [parts for parts in found if parts is not None]


def _without_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--")).strip().rstrip(";")


def lint(name: str, sql: str) -> list[Violation]:
    """Static checks of one Redshift statement: it parses with sqlglot's Redshift dialect (or is one
    of the known command forms), uses no reserved word as an identifier, declares only widths
    Redshift accepts, and calls DATEADD only with a literal INTEGER interval."""
    out = [Violation(name, f"reserved word used as identifier: {w} (r_pg_keywords)")
           for w in reserved_identifiers(sql)]
    body = _without_comments(sql)
    if any(form.match(body) for form in COMMAND_FORMS):
        for inner in re.findall(r"\$\$(.*?)\$\$", body, re.S):
            if "LANGUAGE sql" in body:  # a SQL function's body is one SELECT
                out += lint(f"{name} (body)", inner)
        return out
    try:
        tree = parse(sql)
    except sqlglot.errors.SqlglotError as exc:
        return [*out, Violation(name, f"does not parse as Redshift: {exc}")]
    if isinstance(tree, exp.Command):
        out.append(Violation(name, f"sqlglot could not parse it beyond {tree.name!r}"))
    for col, width in varchar_widths(tree).items():
        if not 1 <= width <= MAX_VARCHAR_BYTES:
            out.append(Violation(name, f"VARCHAR({width}) for {col}: width must be 1..{MAX_VARCHAR_BYTES} bytes"))
    for path in super_paths(tree):
        for attribute in path[2:]:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", attribute.name):
                out.append(Violation(name, f"PartiQL attribute {attribute.name!r}: the model reads only attributes "
                                           "named like identifiers (letters, digits, _), which every engine's "
                                           "JSON path takes as written"))
            if not attribute.quoted:
                out.append(Violation(name, f"PartiQL attribute {attribute.name} in {'.'.join(p.sql() for p in path)} "
                                           "must be double-quoted, or its case is folded"))
    if isinstance(tree, exp.Create) and tree.expression is not None:  # CREATE TABLE ... AS
        for cast in tree.find_all(exp.Cast):
            if cast.to.this in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT) and not cast.to.expressions:
                out.append(Violation(name, f"{cast.sql(dialect='redshift')[:60]}: give VARCHAR a length in "
                                           "CREATE TABLE AS; a column of unknown width is VARCHAR(256)"))
    if name.startswith("refresh/"):
        for func in tree.find_all(exp.Anonymous, exp.JSONExtractScalar, exp.ParseJSON):
            called = func.name.upper() if isinstance(func, exp.Anonymous) else func.key.upper()
            if called in JSON_TEXT_FUNCTIONS or isinstance(func, exp.JSONExtractScalar | exp.ParseJSON):
                out.append(Violation(name, f"{func.sql(dialect='redshift')[:40]}...: the merge navigates the "
                                           "SUPER record with PartiQL paths, it does not parse JSON text"))
    for node in tree.find_all(*_DATEADD):
        interval = node.expression
        if not (isinstance(interval, exp.Literal) and INT32_MIN <= int(interval.name) <= INT32_MAX):
            out.append(Violation(name, f"DATEADD interval {interval.sql()} is not a literal INTEGER; "
                                       "use TIMESTAMP + n * INTERVAL '1 millisecond' for BIGINT n"))
    return out
