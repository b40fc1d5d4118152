-- Streaming ingestion: every Kinesis record, whole, as SUPER. Records that are not JSON are kept
-- (as bytes) so the merge can put them in `rejected` instead of losing them.
-- clickstream: skip-if-exists (Redshift has no CREATE MATERIALIZED VIEW IF NOT EXISTS)
-- AUTO REFRESH NO: the refresh workflow refreshes, then merges, so the merge sees a stable view.
CREATE MATERIALIZED VIEW ${schema}.${mv} AUTO REFRESH NO AS
SELECT
    approximate_arrival_timestamp,
    partition_key,
    shard_id,
    sequence_number,
    refresh_time,
    CASE WHEN CAN_JSON_PARSE(kinesis_data) THEN JSON_PARSE(kinesis_data) END AS payload,
    CASE WHEN NOT CAN_JSON_PARSE(kinesis_data) THEN kinesis_data END AS raw_data
FROM ${kinesis_schema}."${stream_name}";
