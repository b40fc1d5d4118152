-- clickstream: redshift-only (locally the streaming table is sql/duckdb/setup/010_streaming_table.sql)
-- When 070_streaming_view.sql changed since it was created, drop the view so 070 creates the new
-- one (a materialized view cannot be altered). The checksum is that of 070's statement.
CALL ${schema}.drop_streaming_view_if_changed('${streaming_view_checksum}');
