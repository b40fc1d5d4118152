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
WHERE s.reason IS NULL
  -- the first staged copy of its (source, message_id), ordered by received_at, then shard and
  -- sequence number (unique per record, so exactly one copy is first): no copy ranks before it.
  -- An anti-join on the key, not ROW_NUMBER() over the staged rows: a window carries every column
  -- through its sort, and cost the local merge about half of this statement's time.
  AND NOT EXISTS (
      SELECT 1 FROM staging AS q
      WHERE q.reason IS NULL AND q.source = s.source AND q.message_id = s.message_id
        AND (q.received_at < s.received_at
             OR (q.received_at = s.received_at
                 AND (q.shard_id < s.shard_id OR (q.shard_id = s.shard_id AND q.sequence_number < s.sequence_number)))))
  AND NOT EXISTS (SELECT 1 FROM recent_keys AS k WHERE k.source = s.source AND k.message_id = s.message_id);
