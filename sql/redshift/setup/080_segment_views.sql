-- Segment warehouse conventions: one relation per message type, with Segment's column names.
CREATE OR REPLACE VIEW ${schema}.segment_events AS
SELECT
    message_id AS id,
    type,
    anonymous_id,
    user_id,
    event,
    event_text,
    name,
    category,
    group_id,
    previous_id,
    received_at,
    sent_at,
    original_timestamp,
    "timestamp",
    context_ip,
    context_user_agent,
    context_page_url,
    context_page_path,
    context_page_title,
    context_page_referrer,
    context_page_search,
    context_library_name,
    context_library_version,
    context_locale,
    context_timezone,
    context_campaign_name,
    context_campaign_source,
    context_campaign_medium,
    context_campaign_term,
    context_campaign_content,
    properties,
    traits,
    source,
    loaded_at
FROM ${schema}.events;

CREATE OR REPLACE VIEW ${schema}.tracks AS SELECT * FROM ${schema}.segment_events WHERE type = 'track';

CREATE OR REPLACE VIEW ${schema}.identifies AS SELECT * FROM ${schema}.segment_events WHERE type = 'identify';

CREATE OR REPLACE VIEW ${schema}.pages AS SELECT * FROM ${schema}.segment_events WHERE type = 'page';

CREATE OR REPLACE VIEW ${schema}.screens AS SELECT * FROM ${schema}.segment_events WHERE type = 'screen';

CREATE OR REPLACE VIEW ${schema}.groups AS SELECT * FROM ${schema}.segment_events WHERE type = 'group';

CREATE OR REPLACE VIEW ${schema}.aliases AS SELECT * FROM ${schema}.segment_events WHERE type = 'alias';

-- Latest traits per user, from their most recent identify.
CREATE OR REPLACE VIEW ${schema}.users AS
SELECT
    user_id AS id,
    anonymous_id,
    traits,
    JSON_EXTRACT_PATH_TEXT(traits, 'email') AS email,
    JSON_EXTRACT_PATH_TEXT(traits, 'name') AS name,
    received_at,
    "timestamp",
    source
FROM (
    SELECT
        i.*,
        -- message id breaks ties deterministically, so replays and fresh loads agree
        ROW_NUMBER() OVER (PARTITION BY i.user_id ORDER BY i."timestamp" DESC, i.received_at DESC, i.id DESC) AS rn
    FROM ${schema}.segment_events AS i
    WHERE i.type = 'identify' AND i.user_id IS NOT NULL AND i.traits LIKE '{%'
) AS latest
WHERE rn = 1;
