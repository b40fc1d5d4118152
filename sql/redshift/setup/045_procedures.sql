-- clickstream: redshift-only (the local warehouse does the same steps in clickstream/warehouse.py)
-- Stored procedures: the Data API runs fixed statements, without parameters, and zone maps prune
-- blocks only for literal bounds, so the bounds are read first and the statement that needs them
-- is run as dynamic SQL with them as literals.
-- https://docs.aws.amazon.com/redshift/latest/dg/stored-procedure-create.html
-- https://docs.aws.amazon.com/redshift/latest/dg/c_PLpgSQL-statements.html (EXECUTE)
-- https://docs.aws.amazon.com/redshift/latest/dg/t_Sorting_data.html (zone maps, sort keys)

-- Run a migration statement once: recorded in schema_migrations in the same transaction.
CREATE OR REPLACE PROCEDURE ${schema}.apply_migration(step_name VARCHAR(128), step_checksum VARCHAR(32),
                                                      step_sql VARCHAR(65535))
AS $$
DECLARE
    applied VARCHAR(32);
BEGIN
    SELECT checksum INTO applied FROM ${schema}.schema_migrations WHERE name = step_name;
    IF applied IS NULL THEN
        EXECUTE step_sql;
        INSERT INTO ${schema}.schema_migrations (name, checksum, applied_at) VALUES (step_name, step_checksum, GETDATE());
    ELSIF applied <> step_checksum THEN
        RAISE EXCEPTION 'migration % was changed after it was applied: add a new migration instead', step_name;
    END IF;
END;
$$ LANGUAGE plpgsql;

-- The streaming view cannot be altered: when its definition (checksum) differs from the one
-- recorded, drop it, so the CREATE that follows builds the new one. The new view reads the stream
-- again from TRIM_HORIZON; the merge's deduplication makes the re-read harmless.
CREATE OR REPLACE PROCEDURE ${schema}.drop_streaming_view_if_changed(view_checksum VARCHAR(32))
AS $$
DECLARE
    recorded VARCHAR(32);
BEGIN
    SELECT checksum INTO recorded FROM ${schema}.schema_migrations WHERE name = 'streaming_view';
    IF recorded IS NULL OR recorded <> view_checksum THEN
        EXECUTE 'DROP MATERIALIZED VIEW IF EXISTS ${schema}.${mv} CASCADE';
        DELETE FROM ${schema}.schema_migrations WHERE name = 'streaming_view';
        INSERT INTO ${schema}.schema_migrations (name, checksum, applied_at)
        VALUES ('streaming_view', view_checksum, GETDATE());
    END IF;
END;
$$ LANGUAGE plpgsql;

-- The refresh's first step: the streaming view's rows past the watermark, as a TEMP table, with the
-- watermark as a literal (the view is in refresh order, so its blocks' zone maps prune).
CREATE OR REPLACE PROCEDURE ${schema}.stage_new_records()
AS $$
DECLARE
    mark TIMESTAMP;
BEGIN
    SELECT watermark INTO mark FROM ${schema}.load_state WHERE name = 'events';
    EXECUTE 'DROP TABLE IF EXISTS new_records';
    EXECUTE 'CREATE TEMP TABLE new_records AS SELECT * FROM ${schema}.${mv} WHERE refresh_time > CAST('
        || QUOTE_LITERAL(TO_CHAR(mark, 'YYYY-MM-DD HH24:MI:SS.US')) || ' AS TIMESTAMP)';
END;
$$ LANGUAGE plpgsql;

-- The keys already loaded within the deduplication window before the oldest staged event (only those
-- also staged now), with the bound as a literal on the sort key received_at: older blocks are skipped.
CREATE OR REPLACE PROCEDURE ${schema}.stage_recent_keys(window_days INTEGER)
AS $$
DECLARE
    oldest TIMESTAMP;
BEGIN
    SELECT MIN(received_at) INTO oldest FROM staging WHERE reason IS NULL;
    EXECUTE 'DROP TABLE IF EXISTS recent_keys';
    EXECUTE 'CREATE TEMP TABLE recent_keys AS SELECT source, message_id FROM ${schema}.events WHERE received_at >= CAST('
        || QUOTE_LITERAL(TO_CHAR(DATEADD(day, -window_days, COALESCE(oldest, GETDATE())), 'YYYY-MM-DD HH24:MI:SS.US'))
        || ' AS TIMESTAMP) AND message_id IN (SELECT message_id FROM staging)';
END;
$$ LANGUAGE plpgsql;

-- The merge's paths ("userId", "receivedAt") find camelCase attributes only while
-- enable_case_sensitive_identifier is on (refresh/015_session.sql); without it every path would
-- be NULL and every record would be rejected as invalid_envelope while the watermark moved on.
-- So the merge checks it first and fails loudly instead.
-- https://docs.aws.amazon.com/redshift/latest/dg/r_enable_case_sensitive_identifier.html
CREATE OR REPLACE PROCEDURE ${schema}.assert_case_sensitive_paths()
AS $$
DECLARE
    probe VARCHAR(8);
BEGIN
    SELECT CASE WHEN IS_VARCHAR(t.j."aB") THEN t.j."aB"::VARCHAR(8) END INTO probe
    FROM (SELECT JSON_PARSE('{"aB":"ok"}') AS j) AS t;
    IF probe IS NULL THEN
        RAISE EXCEPTION 'enable_case_sensitive_identifier is off: the merge''s paths would miss camelCase attributes';
    END IF;
END;
$$ LANGUAGE plpgsql;
