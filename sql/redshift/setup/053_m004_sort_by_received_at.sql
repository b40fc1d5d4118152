-- clickstream: migration
-- clickstream: redshift-only (DuckDB has no sort keys)
-- The merge bounds its deduplication window on received_at; with it as the sort key, zone maps
-- skip older blocks (Segment sorts its tables by received_at too).
-- https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html (ALTER SORTKEY)
ALTER TABLE ${schema}.events ALTER SORTKEY (received_at);
