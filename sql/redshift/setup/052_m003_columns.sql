-- clickstream: migration
-- One column per ALTER TABLE (https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html).
-- rejected.record_bytes: the record's size as received (raw_record may hold only its start).
ALTER TABLE ${schema}.rejected ADD COLUMN record_bytes BIGINT;

-- events.context / batch_context: the message's own context and its batch's, as JSON text, so
-- `events` stays the lossless record (the context_* columns are the merged, typed extract).
ALTER TABLE ${schema}.events ADD COLUMN context VARCHAR(65535);

ALTER TABLE ${schema}.events ADD COLUMN batch_context VARCHAR(65535);
