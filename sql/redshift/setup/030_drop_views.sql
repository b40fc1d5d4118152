-- Views are rebuilt by every setup: dropped here, before the migrations change the tables under
-- them, and created again at the end: replacing a view in place cannot change its columns
-- (https://docs.aws.amazon.com/redshift/latest/dg/r_CREATE_VIEW.html). `pending` is the view of
-- earlier versions, replaced by the staging step of the refresh.
DROP VIEW IF EXISTS ${schema}.users;

DROP VIEW IF EXISTS ${schema}.tracks;

DROP VIEW IF EXISTS ${schema}.identifies;

DROP VIEW IF EXISTS ${schema}.pages;

DROP VIEW IF EXISTS ${schema}.screens;

DROP VIEW IF EXISTS ${schema}.groups;

DROP VIEW IF EXISTS ${schema}.aliases;

DROP VIEW IF EXISTS ${schema}.segment_events;

DROP VIEW IF EXISTS ${schema}.pending;
