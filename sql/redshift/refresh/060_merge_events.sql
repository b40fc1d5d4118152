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
FROM (
    SELECT
        p.*,
        ROW_NUMBER() OVER (
            PARTITION BY p.source, p.message_id ORDER BY p.received_at, p.shard_id, p.sequence_number
        ) AS rn
    FROM staging AS p
    WHERE p.reason IS NULL
) AS s
WHERE s.rn = 1
  AND NOT EXISTS (SELECT 1 FROM recent_keys AS k WHERE k.source = s.source AND k.message_id = s.message_id);
