-- Rows that cannot be events, with the reason; a record seen again (replay) is not added twice.
INSERT INTO ${schema}.rejected (
    reason, source, message_id, received_at, sequence_number, raw_format, raw, raw_hash, loaded_at
)
SELECT reason, source, message_id, received_at, sequence_number, raw_format, raw, raw_hash, GETDATE()
FROM (
    SELECT
        p.*,
        MD5(p.raw) AS raw_hash,
        ROW_NUMBER() OVER (PARTITION BY MD5(p.raw) ORDER BY p.sequence_number) AS rn
    FROM ${schema}.staging AS p
    WHERE p.reason IS NOT NULL
) AS s
WHERE s.rn = 1
  AND NOT EXISTS (SELECT 1 FROM ${schema}.rejected AS x WHERE x.raw_hash = s.raw_hash);
