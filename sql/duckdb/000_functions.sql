-- Redshift functions sqlglot passes through unchanged, defined for DuckDB.
CREATE OR REPLACE MACRO json_serialize(x) AS CAST(x AS VARCHAR);
CREATE OR REPLACE MACRO can_json_parse(x) AS json_valid(x);
CREATE OR REPLACE MACRO from_varbyte(b, enc) AS lower(hex(b));
