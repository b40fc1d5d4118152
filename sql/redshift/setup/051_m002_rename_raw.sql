-- clickstream: migration
-- RAW is a Redshift reserved word (https://docs.aws.amazon.com/redshift/latest/dg/r_pg_keywords.html).
ALTER TABLE ${schema}.rejected RENAME COLUMN "raw" TO raw_record;
