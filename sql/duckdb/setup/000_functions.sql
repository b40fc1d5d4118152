-- Redshift functions sqlglot passes through unchanged, defined for DuckDB, with Redshift's limits:
-- where Redshift fails a statement, these fail it too (error()), so the tests see the failure.
-- The limits are those of clickstream/redshift_rules.py (65,535 bytes for VARCHAR and JSON text).
-- JSON_SERIALIZE of NULL is the JSON text 'null' (https://docs.aws.amazon.com/redshift/latest/dg/JSON_SERIALIZE.html).
CREATE OR REPLACE MACRO json_serialize(x) AS
    CASE WHEN x IS NULL THEN 'null'
         WHEN strlen(CAST(x AS VARCHAR)) <= 65535 THEN CAST(x AS VARCHAR)
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

-- SUPER type information functions (https://docs.aws.amazon.com/redshift/latest/dg/c_Type_Info_Functions.html)
-- for JSON values. Applied to a path, the transpiler tests the first character instead (super_first).
-- (JSON text of a column may start with whitespace; is_object reads past it instead of parsing.)
CREATE OR REPLACE MACRO is_object(x) AS
    CASE WHEN left(CAST(x AS VARCHAR), 1) IN (' ', e'\t', e'\n', e'\r')
         THEN left(ltrim(CAST(x AS VARCHAR), e' \t\n\r'), 1) ELSE left(CAST(x AS VARCHAR), 1) END = '{';

CREATE OR REPLACE MACRO is_array(x) AS json_type(x) = 'ARRAY';

CREATE OR REPLACE MACRO is_varchar(x) AS json_type(x) = 'VARCHAR';

CREATE OR REPLACE MACRO is_boolean(x) AS json_type(x) = 'BOOLEAN';

CREATE OR REPLACE MACRO json_typeof(x) AS
    CASE json_type(x) WHEN 'OBJECT' THEN 'object' WHEN 'ARRAY' THEN 'array' WHEN 'VARCHAR' THEN 'string'
         WHEN 'BOOLEAN' THEN 'boolean' WHEN 'NULL' THEN 'null'
         WHEN 'BIGINT' THEN 'number' WHEN 'UBIGINT' THEN 'number' WHEN 'DOUBLE' THEN 'number' END;

-- A value json_extract wrote (minified): its first character tells its type.
CREATE OR REPLACE MACRO super_first(x) AS left(CAST(x AS VARCHAR), 1);

CREATE OR REPLACE MACRO super_typeof(x) AS
    CASE super_first(x) WHEN '{' THEN 'object' WHEN '[' THEN 'array' WHEN '"' THEN 'string'
         WHEN 't' THEN 'boolean' WHEN 'f' THEN 'boolean' WHEN 'n' THEN 'null'
         WHEN '-' THEN 'number' WHEN '0' THEN 'number' WHEN '1' THEN 'number' WHEN '2' THEN 'number'
         WHEN '3' THEN 'number' WHEN '4' THEN 'number' WHEN '5' THEN 'number' WHEN '6' THEN 'number'
         WHEN '7' THEN 'number' WHEN '8' THEN 'number' WHEN '9' THEN 'number' END;

-- CAST(path AS VARCHAR): the string a SUPER string holds; NULL for other types (lax mode).
CREATE OR REPLACE MACRO super_varchar(x) AS
    CASE WHEN super_first(x) = '"' THEN json_extract_string(x, '$') END;

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
