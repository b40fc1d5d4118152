-- clickstream: transaction
-- The Segment semantics of the model, in one place: what each new streaming-view row becomes.
--   * batch-level context is merged under the message's own: per top-level context key, the
--     message's value wins when it has one (Segment's shallow merge; a null or a value of the wrong
--     type counts as absent);
--   * receivedAt from the gateway, originalTimestamp = the client's timestamp,
--     timestamp = receivedAt - (sentAt - originalTimestamp) (device clock-skew correction);
--   * messageId, when the client sent none, is derived from the request id and position, so
--     re-reading the same record (replay, retry of the merge) gives the same id;
--   * context.ip comes from the request for client-side libraries, or when context.direct is true;
--   * values longer than their column are truncated byte-safely (f_clickstream_truncate), as
--     Segment truncates; a message id is never truncated (it is the deduplication key);
--   * reason is non-null when the row cannot be an event: it then goes to `rejected`.
-- One parse per record: the streaming view parsed it into SUPER (JSON_PARSE), and this statement
-- only navigates it with PartiQL paths, as AWS recommends over JSON_EXTRACT_PATH_TEXT, which parses
-- its input again on every call (https://docs.aws.amazon.com/redshift/latest/dg/query-super.html,
-- https://docs.aws.amazon.com/redshift/latest/dg/JSON_EXTRACT_PATH_TEXT.html). Attribute names are
-- quoted: with enable_case_sensitive_identifier on (015_session.sql) a quoted name keeps its case,
-- so "userId" finds userId (https://docs.aws.amazon.com/redshift/latest/dg/super-configurations.html).
-- Types are checked before use (IS_VARCHAR, IS_OBJECT, IS_BOOLEAN, JSON_TYPEOF), so a value of the
-- wrong type is NULL by the SQL, not by the engine's lax casting rules
-- (https://docs.aws.amazon.com/redshift/latest/dg/r_is_varchar.html, r_json_typeof.html), and casts
-- say VARCHAR(65535): a CREATE TABLE AS column of unknown width would be VARCHAR(256).
-- No input can make it fail: records over 64,000 bytes are never parsed (the streaming view keeps
-- their bytes), only records JSON_SERIALIZE can write whole are navigated (so every part of them
-- can be written too), and times are computed in BIGINT milliseconds, never through a 32-bit
-- DATEADD interval.
CREATE TEMP TABLE staging AS
WITH r AS (
    SELECT
        v.shard_id,
        v.sequence_number,
        v.refresh_time,
        v.record_bytes,
        -- JSON_SIZE has no size limit; JSON_SERIALIZE fails beyond 65,535 bytes, and a record's
        -- serialised form may be longer than the record (e.g. numbers written with exponents)
        JSON_SIZE(v.payload) AS payload_bytes,
        v.payload,
        -- bytes that are not JSON: the first 32,000 bytes as hex (at most 64,000 characters)
        CASE WHEN v.payload IS NULL THEN FROM_VARBYTE(SUBSTRING(v.raw_data, 1, 32000), 'hex') END AS raw_hex,
        CASE WHEN IS_OBJECT(v.payload) AND JSON_SIZE(v.payload) <= 65535 THEN v.payload END AS d
    FROM new_records AS v
),
-- The envelope and the message, navigated from the parsed record.
f AS (
    SELECT
        r.*,
        CASE WHEN JSON_TYPEOF(r.d."v") = 'number' THEN JSON_SERIALIZE(r.d."v") END AS envelope_version,
        CASE WHEN IS_VARCHAR(r.d."source") THEN NULLIF(r.d."source"::VARCHAR(65535), '') END AS source,
        TRY_CAST(CASE WHEN JSON_TYPEOF(r.d."receivedAt") = 'number' THEN JSON_SERIALIZE(r.d."receivedAt") END
            AS BIGINT) AS received_ms,
        CASE WHEN IS_VARCHAR(r.d."requestId") THEN NULLIF(r.d."requestId"::VARCHAR(65535), '') END AS request_id,
        CASE WHEN JSON_TYPEOF(r.d."index") = 'number' THEN JSON_SERIALIZE(r.d."index") END AS request_index,
        CASE WHEN IS_VARCHAR(r.d."ip") THEN NULLIF(r.d."ip"::VARCHAR(65535), '') END AS request_ip,
        CASE WHEN IS_VARCHAR(r.d."userAgent") THEN NULLIF(r.d."userAgent"::VARCHAR(65535), '') END AS request_user_agent,
        CASE WHEN IS_VARCHAR(r.d."route") THEN NULLIF(r.d."route"::VARCHAR(65535), '') END AS route,
        CASE WHEN IS_VARCHAR(r.d."routeType") THEN NULLIF(r.d."routeType"::VARCHAR(65535), '') END AS route_type,
        -- IS_OBJECT of a missing attribute is NULL, not false
        COALESCE(IS_OBJECT(r.d."message"), FALSE) AS has_message,
        CASE WHEN IS_VARCHAR(r.d."message"."type") THEN NULLIF(r.d."message"."type"::VARCHAR(65535), '') END
            AS message_type,
        -- identifiers: a number is written as its JSON text, as JSON_EXTRACT_PATH_TEXT would
        CASE WHEN IS_VARCHAR(r.d."message"."messageId") THEN NULLIF(r.d."message"."messageId"::VARCHAR(65535), '')
            WHEN JSON_TYPEOF(r.d."message"."messageId") = 'number' THEN JSON_SERIALIZE(r.d."message"."messageId")
        END AS client_message_id,
        CASE WHEN IS_VARCHAR(r.d."message"."anonymousId") THEN NULLIF(r.d."message"."anonymousId"::VARCHAR(65535), '')
            WHEN JSON_TYPEOF(r.d."message"."anonymousId") = 'number'
                THEN JSON_SERIALIZE(r.d."message"."anonymousId")
        END AS anonymous_id,
        CASE WHEN IS_VARCHAR(r.d."message"."userId") THEN NULLIF(r.d."message"."userId"::VARCHAR(65535), '')
            WHEN JSON_TYPEOF(r.d."message"."userId") = 'number' THEN JSON_SERIALIZE(r.d."message"."userId")
        END AS user_id,
        CASE WHEN IS_VARCHAR(r.d."message"."groupId") THEN NULLIF(r.d."message"."groupId"::VARCHAR(65535), '')
            WHEN JSON_TYPEOF(r.d."message"."groupId") = 'number' THEN JSON_SERIALIZE(r.d."message"."groupId")
        END AS group_id,
        CASE WHEN IS_VARCHAR(r.d."message"."previousId") THEN NULLIF(r.d."message"."previousId"::VARCHAR(65535), '')
            WHEN JSON_TYPEOF(r.d."message"."previousId") = 'number' THEN JSON_SERIALIZE(r.d."message"."previousId")
        END AS previous_id,
        CASE WHEN IS_VARCHAR(r.d."message"."event") THEN NULLIF(r.d."message"."event"::VARCHAR(65535), '') END
            AS event_text,
        CASE WHEN IS_VARCHAR(r.d."message"."name") THEN NULLIF(r.d."message"."name"::VARCHAR(65535), '') END AS name,
        CASE WHEN IS_VARCHAR(r.d."message"."category") THEN NULLIF(r.d."message"."category"::VARCHAR(65535), '') END
            AS category,
        CASE WHEN IS_VARCHAR(r.d."message"."sentAt") THEN r.d."message"."sentAt"::VARCHAR(65535) END AS message_sent_at,
        CASE WHEN IS_VARCHAR(r.d."message"."timestamp") THEN r.d."message"."timestamp"::VARCHAR(65535) END
            AS timestamp_text,
        CASE WHEN IS_VARCHAR(r.d."batch"."sentAt") THEN r.d."batch"."sentAt"::VARCHAR(65535) END AS batch_sent_at,
        CASE WHEN IS_OBJECT(r.d."message"."properties") THEN r.d."message"."properties" END AS properties,
        CASE WHEN IS_OBJECT(r.d."message"."traits") THEN r.d."message"."traits" END AS message_traits,
        CASE WHEN IS_OBJECT(r.d."message"."context") THEN r.d."message"."context" END AS mc,
        CASE WHEN IS_OBJECT(r.d."batch"."context") THEN r.d."batch"."context" END AS bc
    FROM r
),
-- Shallow merge of the two contexts, key by key.
ctx AS (
    SELECT
        c.*,
        COALESCE(c.message_type, c.route_type) AS type,
        COALESCE(c.client_message_id, c.request_id || '-' || c.request_index) AS message_id,
        COALESCE(c.message_sent_at, c.batch_sent_at) AS sent_at_text,
        COALESCE(CASE WHEN IS_VARCHAR(c.mc."ip") THEN c.mc."ip"::VARCHAR(65535) END,
                 CASE WHEN IS_VARCHAR(c.bc."ip") THEN c.bc."ip"::VARCHAR(65535) END) AS ctx_ip,
        COALESCE(CASE WHEN IS_BOOLEAN(c.mc."direct") THEN JSON_SERIALIZE(c.mc."direct") END,
                 CASE WHEN IS_BOOLEAN(c.bc."direct") THEN JSON_SERIALIZE(c.bc."direct") END) AS ctx_direct,
        COALESCE(CASE WHEN IS_VARCHAR(c.mc."userAgent") THEN c.mc."userAgent"::VARCHAR(65535) END,
                 CASE WHEN IS_VARCHAR(c.bc."userAgent") THEN c.bc."userAgent"::VARCHAR(65535) END) AS ctx_user_agent,
        COALESCE(CASE WHEN IS_VARCHAR(c.mc."locale") THEN c.mc."locale"::VARCHAR(65535) END,
                 CASE WHEN IS_VARCHAR(c.bc."locale") THEN c.bc."locale"::VARCHAR(65535) END) AS ctx_locale,
        COALESCE(CASE WHEN IS_VARCHAR(c.mc."timezone") THEN c.mc."timezone"::VARCHAR(65535) END,
                 CASE WHEN IS_VARCHAR(c.bc."timezone") THEN c.bc."timezone"::VARCHAR(65535) END) AS ctx_timezone,
        CASE WHEN IS_OBJECT(c.mc."page") THEN c.mc."page" WHEN IS_OBJECT(c.bc."page") THEN c.bc."page" END AS page,
        CASE WHEN IS_OBJECT(c.mc."library") THEN c.mc."library" WHEN IS_OBJECT(c.bc."library") THEN c.bc."library"
        END AS library,
        CASE WHEN IS_OBJECT(c.mc."campaign") THEN c.mc."campaign"
            WHEN IS_OBJECT(c.bc."campaign") THEN c.bc."campaign" END AS campaign,
        -- identify/group traits, else context.traits (what analytics.js sends on track calls)
        CASE WHEN c.message_traits IS NOT NULL THEN c.message_traits
            WHEN IS_OBJECT(c.mc."traits") THEN c.mc."traits" WHEN IS_OBJECT(c.bc."traits") THEN c.bc."traits"
        END AS traits
    FROM f AS c
),
n AS (
    SELECT
        o.*,
        CASE WHEN IS_VARCHAR(o.page."url") THEN o.page."url"::VARCHAR(65535) END AS page_url,
        CASE WHEN IS_VARCHAR(o.page."path") THEN o.page."path"::VARCHAR(65535) END AS page_path,
        CASE WHEN IS_VARCHAR(o.page."title") THEN o.page."title"::VARCHAR(65535) END AS page_title,
        CASE WHEN IS_VARCHAR(o.page."referrer") THEN o.page."referrer"::VARCHAR(65535) END AS page_referrer,
        CASE WHEN IS_VARCHAR(o.page."search") THEN o.page."search"::VARCHAR(65535) END AS page_search,
        CASE WHEN IS_VARCHAR(o.library."name") THEN o.library."name"::VARCHAR(65535) END AS library_name,
        CASE WHEN IS_VARCHAR(o.library."version") THEN o.library."version"::VARCHAR(65535) END AS library_version,
        CASE WHEN IS_VARCHAR(o.campaign."name") THEN o.campaign."name"::VARCHAR(65535) END AS campaign_name,
        CASE WHEN IS_VARCHAR(o.campaign."source") THEN o.campaign."source"::VARCHAR(65535) END AS campaign_source,
        CASE WHEN IS_VARCHAR(o.campaign."medium") THEN o.campaign."medium"::VARCHAR(65535) END AS campaign_medium,
        CASE WHEN IS_VARCHAR(o.campaign."term") THEN o.campaign."term"::VARCHAR(65535) END AS campaign_term,
        CASE WHEN IS_VARCHAR(o.campaign."content") THEN o.campaign."content"::VARCHAR(65535) END AS campaign_content,
        -- BIGINT milliseconds times an interval: DATEADD takes a 32-bit interval. Year 1 to 9999 only.
        CASE WHEN o.received_ms BETWEEN -62135596800000 AND 253402300799999
            THEN CAST('1970-01-01 00:00:00' AS TIMESTAMP) + o.received_ms * INTERVAL '1 millisecond'
        END AS received_at,
        CASE WHEN o.timestamp_text ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}'
            THEN TRY_CAST(o.timestamp_text AS TIMESTAMPTZ) END AS original_timestamp,
        CASE WHEN o.sent_at_text ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}'
            THEN TRY_CAST(o.sent_at_text AS TIMESTAMPTZ) END AS sent_at,
        -- the event's slug, = segment_schema.snakecase (go-snakecase; docs/warehouse.md). Regexes:
        -- https://docs.aws.amazon.com/redshift/latest/dg/pattern-matching-conditions-posix.html
        LOWER(TRIM(BOTH '_' FROM REGEXP_REPLACE(
            SUBSTRING(REGEXP_REPLACE(o.event_text, '[^[:alnum:]]+', '_'), 1, 2048),
            '([[:lower:]][[:digit:]]*)([[:upper:]])', '\\1_\\2'))) AS event_name
    FROM ctx AS o
),
judged AS (
    SELECT
        j.*,
        -- Segment's client-side libraries: their events get the request's IP and user agent.
        j.route IN ('t', 'i', 'p', 's', 'g', 'a', 'b') OR j.ctx_direct = 'true'
            OR j.library_name IN (
                'analytics.js', 'analytics-next', 'analytics-ios', 'analytics-android', 'analytics-swift',
                'analytics-kotlin', 'analytics-react-native', 'analytics-flutter') AS client_side,
        CASE
            WHEN j.record_bytes > 64000 OR j.payload_bytes > 65535 THEN 'record_too_large'
            WHEN j.payload IS NULL THEN 'invalid_json'
            WHEN j.d IS NULL THEN 'invalid_envelope'
            WHEN j.envelope_version IS NULL OR j.envelope_version <> '1' THEN 'unsupported_envelope_version'
            WHEN j.received_at IS NULL OR j.source IS NULL OR OCTET_LENGTH(j.source) > 64 THEN 'invalid_envelope'
            WHEN NOT j.has_message THEN 'invalid_message'
            WHEN j.type IS NULL OR j.type NOT IN ('identify', 'track', 'page', 'screen', 'group', 'alias')
                THEN 'invalid_type'
            WHEN j.user_id IS NULL AND j.anonymous_id IS NULL THEN 'missing_user_id_and_anonymous_id'
            WHEN j.type = 'track' AND j.event_text IS NULL THEN 'missing_event'
            WHEN j.type = 'group' AND j.group_id IS NULL THEN 'missing_group_id'
            WHEN j.type = 'alias' AND j.previous_id IS NULL THEN 'missing_previous_id'
            WHEN j.type = 'alias' AND j.user_id IS NULL THEN 'missing_user_id'
            -- no messageId and no request id to derive one from (a record not written by the gateway)
            WHEN j.message_id IS NULL THEN 'missing_message_id'
            -- bytes, not characters: VARCHAR(100) holds 100 bytes
            WHEN OCTET_LENGTH(j.message_id) > 100 THEN 'message_id_too_long'
        END AS reason
    FROM n AS j
),
-- The record's text, only for rows that go to `rejected` (none: JSON too large to serialise; the
-- archive has it).
kept AS (
    SELECT
        k.*,
        CASE WHEN k.reason IS NOT NULL AND k.payload_bytes <= 65535 THEN JSON_SERIALIZE(k.payload) END AS raw_json,
        -- JSON too large to serialise: its request id and serialised size stand for it (the same
        -- record replayed has both; it is in the archive)
        CASE WHEN k.reason IS NOT NULL AND k.payload_bytes > 65535 AND IS_VARCHAR(k.payload."requestId")
            THEN 'request:' || k.payload."requestId"::VARCHAR(65535) || ':' || CAST(k.payload_bytes AS VARCHAR(20))
        END AS oversized_key
    FROM judged AS k
)
SELECT
    n.shard_id,
    n.sequence_number,
    n.refresh_time,
    n.reason,
    n.record_bytes,
    CASE WHEN n.reason IS NOT NULL THEN
        CASE WHEN n.raw_json IS NOT NULL THEN 'json' WHEN n.raw_hex IS NOT NULL THEN 'hex' ELSE 'none' END
    END AS raw_format,
    CASE WHEN n.reason IS NOT NULL THEN COALESCE(n.raw_json, n.raw_hex) END AS raw_record,
    -- the key `rejected` deduplicates on: the record, or for a truncated one its start and size
    CASE WHEN n.reason IS NOT NULL THEN MD5(COALESCE(n.raw_json, n.raw_hex || ':' || CAST(n.record_bytes AS VARCHAR(20)),
                                                  n.oversized_key, n.shard_id || ':' || n.sequence_number))
    END AS raw_hash,
    n.message_id,
    n.type,
    n.source,
    f_clickstream_truncate(n.anonymous_id, 1024) AS anonymous_id,
    f_clickstream_truncate(n.user_id, 1024) AS user_id,
    f_clickstream_truncate(n.event_name, 1024) AS event,
    f_clickstream_truncate(n.event_text, 1024) AS event_text,
    f_clickstream_truncate(n.name, 1024) AS name,
    f_clickstream_truncate(n.category, 1024) AS category,
    f_clickstream_truncate(n.group_id, 1024) AS group_id,
    f_clickstream_truncate(n.previous_id, 1024) AS previous_id,
    n.received_at,
    n.sent_at,
    n.original_timestamp,
    CASE
        -- skew correction in BIGINT milliseconds; a result outside year 1..9999 falls back to received_at
        WHEN n.received_at IS NULL THEN NULL  -- a rejected row; received_ms may be anything
        WHEN n.original_timestamp IS NOT NULL AND n.sent_at IS NOT NULL
            AND n.received_ms - DATEDIFF(ms, n.original_timestamp, n.sent_at)
                BETWEEN -62135596800000 AND 253402300799999
            THEN CAST('1970-01-01 00:00:00' AS TIMESTAMP)
                + (n.received_ms - DATEDIFF(ms, n.original_timestamp, n.sent_at)) * INTERVAL '1 millisecond'
        WHEN n.original_timestamp IS NOT NULL AND n.sent_at IS NOT NULL THEN n.received_at
        WHEN n.original_timestamp IS NOT NULL THEN n.original_timestamp
        ELSE n.received_at
    END AS "timestamp",
    f_clickstream_truncate(COALESCE(n.ctx_ip, CASE WHEN n.client_side THEN n.request_ip END), 64) AS context_ip,
    f_clickstream_truncate(COALESCE(n.ctx_user_agent, CASE WHEN n.client_side THEN n.request_user_agent END), 4096)
        AS context_user_agent,
    f_clickstream_truncate(n.page_url, 4096) AS context_page_url,
    f_clickstream_truncate(n.page_path, 4096) AS context_page_path,
    f_clickstream_truncate(n.page_title, 4096) AS context_page_title,
    f_clickstream_truncate(n.page_referrer, 4096) AS context_page_referrer,
    f_clickstream_truncate(n.page_search, 4096) AS context_page_search,
    f_clickstream_truncate(n.library_name, 256) AS context_library_name,
    f_clickstream_truncate(n.library_version, 256) AS context_library_version,
    f_clickstream_truncate(n.ctx_locale, 64) AS context_locale,
    f_clickstream_truncate(n.ctx_timezone, 64) AS context_timezone,
    f_clickstream_truncate(n.campaign_name, 1024) AS context_campaign_name,
    f_clickstream_truncate(n.campaign_source, 1024) AS context_campaign_source,
    f_clickstream_truncate(n.campaign_medium, 1024) AS context_campaign_medium,
    f_clickstream_truncate(n.campaign_term, 1024) AS context_campaign_term,
    f_clickstream_truncate(n.campaign_content, 1024) AS context_campaign_content,
    -- JSON text of the objects (JSON_SERIALIZE of NULL would be the text 'null')
    CASE WHEN n.properties IS NOT NULL THEN JSON_SERIALIZE(n.properties) END AS properties,
    CASE WHEN n.traits IS NOT NULL THEN JSON_SERIALIZE(n.traits) END AS traits,
    CASE WHEN n.mc IS NOT NULL THEN JSON_SERIALIZE(n.mc) END AS context,
    CASE WHEN n.bc IS NOT NULL THEN JSON_SERIALIZE(n.bc) END AS batch_context,
    f_clickstream_truncate(n.request_id, 128) AS request_id,
    f_clickstream_truncate(n.request_ip, 64) AS request_ip
FROM kept AS n;
