-- clickstream: transaction
-- What ${schema}.stage_recent_keys(window) does on Redshift, with the bound filled in as a literal.
CREATE OR REPLACE TEMP TABLE recent_keys AS
SELECT source, message_id FROM ${schema}.events WHERE received_at >= CAST(${recent_since} AS TIMESTAMPTZ)
  AND message_id IN (SELECT message_id FROM staging);
