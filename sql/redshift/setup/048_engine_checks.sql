-- clickstream: redshift-only (DuckDB runs the same expressions in every local test)
-- The merge relies on a few behaviours the Redshift documentation does not state outright; setup
-- checks each on the engine it deploys to and fails with the behaviour's name, instead of a model
-- that loads wrong data quietly. The local model's tests cannot see these: they run on DuckDB.
--   * REGEXP_REPLACE back-references ('\\1', the event slug of refresh/030):
--     https://docs.aws.amazon.com/redshift/latest/dg/REGEXP_REPLACE.html
--   * a CASE that yields SUPER in one branch and NULL otherwise (the staging step's objects), and a
--     quoted PartiQL path on a derived table: https://docs.aws.amazon.com/redshift/latest/dg/query-super.html
--   * BIGINT milliseconds times INTERVAL '1 millisecond' (receivedAt, clock-skew correction), with
--     epoch milliseconds beyond 32 bits: https://docs.aws.amazon.com/redshift/latest/dg/r_interval_literals.html
--   * JSON_SERIALIZE of a SUPER number and boolean (numeric ids, context.direct)
CREATE OR REPLACE PROCEDURE ${schema}.check_engine()
AS $$
DECLARE
    slug VARCHAR(64);
    object_text VARCHAR(64);
    at_time TIMESTAMP;
    serialised VARCHAR(64);
BEGIN
    SELECT LOWER(REGEXP_REPLACE('productViewed2X', '([[:lower:]][[:digit:]]*)([[:upper:]])', '\\1_\\2'))
        INTO slug;
    IF slug IS NULL OR slug <> 'product_viewed2_x' THEN
        RAISE EXCEPTION 'engine check: REGEXP_REPLACE back-references gave %, expected product_viewed2_x', slug;
    END IF;
    SELECT JSON_SERIALIZE(CASE WHEN IS_OBJECT(t.j) THEN t.j END) INTO object_text
    FROM (SELECT JSON_PARSE('{"a":1}') AS j) AS t;
    IF object_text IS NULL OR object_text <> '{"a":1}' THEN
        RAISE EXCEPTION 'engine check: a CASE yielding SUPER gave %, expected {"a":1}', object_text;
    END IF;
    SELECT CAST('1970-01-01 00:00:00' AS TIMESTAMP) + CAST(1764460800123 AS BIGINT) * INTERVAL '1 millisecond'
        INTO at_time;
    IF at_time IS NULL OR at_time <> CAST('2025-11-30 00:00:00.123' AS TIMESTAMP) THEN
        RAISE EXCEPTION 'engine check: BIGINT milliseconds times an interval gave %, expected 2025-11-30 00:00:00.123',
            at_time;
    END IF;
    SELECT JSON_SERIALIZE(t.j."n") || ',' || JSON_SERIALIZE(t.j."b") INTO serialised
    FROM (SELECT JSON_PARSE('{"n":1764460800000,"b":true}') AS j) AS t;
    IF serialised IS NULL OR serialised <> '1764460800000,true' THEN
        RAISE EXCEPTION 'engine check: JSON_SERIALIZE of a number and a boolean gave %, expected 1764460800000,true',
            serialised;
    END IF;
END;
$$ LANGUAGE plpgsql;

CALL ${schema}.check_engine();
