-- clickstream: transaction
-- New events, deduplicated by (source, message_id): against each other (the earliest received copy
-- wins) and against the events loaded within the deduplication window (recent_keys).
INSERT INTO ${schema}.events (
    message_id, type, source, anonymous_id, user_id, event, event_text, name, category, group_id, previous_id,
    received_at, sent_at, original_timestamp, "timestamp",
    context_ip, context_user_agent, context_page_url, context_page_path, context_page_title,
    context_page_referrer, context_page_search, context_library_name, context_library_version,
    context_locale, context_timezone, context_campaign_name, context_campaign_source,
    context_campaign_medium, context_campaign_term, context_campaign_content,
    properties, traits, request_id, request_ip, sequence_number, loaded_at, context, batch_context
)
SELECT
    message_id, type, source, anonymous_id, user_id, event, event_text, name, category, group_id, previous_id,
    received_at, sent_at, original_timestamp, "timestamp",
    context_ip, context_user_agent, context_page_url, context_page_path, context_page_title,
    context_page_referrer, context_page_search, context_library_name, context_library_version,
    context_locale, context_timezone, context_campaign_name, context_campaign_source,
    context_campaign_medium, context_campaign_term, context_campaign_content,
    properties, traits, request_id, request_ip, sequence_number, GETDATE(), context, batch_context
FROM staging AS s
-- the first staged copy of its (source, message_id), ordered by received_at, then shard and sequence
-- number (unique per record, so exactly one copy is first). The window sorts only the key and order
-- columns, and its winners are joined back by record: a window over every staged column cost the
-- local merge half of this statement's time, and an anti-join of copies against copies is
-- quadratic in the copies of one id (a client retrying one message thousands of times).
JOIN (
    SELECT
        w.shard_id AS first_shard_id,
        w.sequence_number AS first_sequence_number,
        ROW_NUMBER() OVER (PARTITION BY w.source, w.message_id
                           ORDER BY w.received_at, w.shard_id, w.sequence_number) AS rn
    FROM staging AS w
    WHERE w.reason IS NULL
) AS first_copy
    ON first_copy.first_shard_id = s.shard_id AND first_copy.first_sequence_number = s.sequence_number
   AND first_copy.rn = 1
WHERE s.reason IS NULL
  AND NOT EXISTS (SELECT 1 FROM recent_keys AS k WHERE k.source = s.source AND k.message_id = s.message_id);
