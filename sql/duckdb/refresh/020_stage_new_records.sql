-- clickstream: transaction
-- What ${schema}.stage_new_records() does on Redshift; the loader fills the bounds in as literals
-- (DuckDB's row-group min/max indexes, like zone maps, skip only on constant bounds). A view, not a
-- copy: locally the rows cannot change during the merge (one process writes the file).
CREATE OR REPLACE TEMP VIEW new_records AS
SELECT * FROM ${schema}.${mv} WHERE refresh_time > CAST(${watermark} AS TIMESTAMP);
