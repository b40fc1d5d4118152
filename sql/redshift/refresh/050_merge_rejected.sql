-- clickstream: transaction
-- Rows that cannot be events, with the reason; a record seen again (replay) is not added twice.
INSERT INTO ${schema}.rejected (
    reason, source, message_id, received_at, sequence_number, raw_format, raw_record, raw_hash, record_bytes,
    loaded_at
)
SELECT
    reason, f_clickstream_truncate(source, 64), f_clickstream_truncate(message_id, 1024), received_at,
    sequence_number, raw_format, raw_record, raw_hash, record_bytes, GETDATE()
FROM (
    SELECT
        p.*,
        ROW_NUMBER() OVER (PARTITION BY p.raw_hash ORDER BY p.shard_id, p.sequence_number) AS rn
    FROM staging AS p
    WHERE p.reason IS NOT NULL
) AS s
WHERE s.rn = 1
  AND NOT EXISTS (SELECT 1 FROM ${schema}.rejected AS x WHERE x.raw_hash = s.raw_hash);
