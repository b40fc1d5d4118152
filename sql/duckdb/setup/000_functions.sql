-- Redshift functions sqlglot passes through unchanged, defined for DuckDB, with Redshift's limits:
-- where Redshift fails a statement, these fail it too (error()), so the tests see the failure.
-- The limits are those of clickstream/redshift_rules.py (65,535 bytes for VARCHAR and JSON text).
CREATE OR REPLACE MACRO json_serialize(x) AS
    CASE WHEN strlen(CAST(x AS VARCHAR)) <= 65535 THEN CAST(x AS VARCHAR)
         ELSE error('JSON_SERIALIZE: result exceeds the VARCHAR limit of 65535 bytes') END;

CREATE OR REPLACE MACRO can_json_parse(x) AS json_valid(x);

CREATE OR REPLACE MACRO json_size(x) AS strlen(CAST(x AS VARCHAR));

CREATE OR REPLACE MACRO from_varbyte(b, enc) AS
    CASE WHEN octet_length(b) * 2 <= 65535 THEN lower(hex(b))
         ELSE error('FROM_VARBYTE: result exceeds the VARCHAR limit of 65535 bytes') END;

-- FROM_VARBYTE(SUBSTRING(b, start, n), 'hex'): DuckDB has no SUBSTRING for BLOB.
CREATE OR REPLACE MACRO from_varbyte_substring(b, start, n, enc) AS
    CASE WHEN least(n, octet_length(b) - start + 1) * 2 <= 65535
         THEN lower(hex(b))[2 * start - 1 : 2 * (start + n - 1)]
         ELSE error('FROM_VARBYTE: result exceeds the VARCHAR limit of 65535 bytes') END;

-- Input checks the transpiler wraps around arguments Redshift limits.
CREATE OR REPLACE MACRO redshift_json_text(x) AS
    CASE WHEN x IS NULL OR strlen(x) <= 65535 THEN x
         ELSE error('JSON_EXTRACT_PATH_TEXT: input exceeds 64 KB') END;

CREATE OR REPLACE MACRO redshift_int32(x) AS
    CASE WHEN x IS NULL OR x BETWEEN -2147483648 AND 2147483647 THEN x
         ELSE error('DATEADD: interval ' || x || ' is out of range for type integer') END;

CREATE OR REPLACE MACRO redshift_varchar(x, n, col) AS
    CASE WHEN x IS NULL OR strlen(x) <= n THEN x
         ELSE error('value too long for type character varying(' || n || ') in ' || col) END;
