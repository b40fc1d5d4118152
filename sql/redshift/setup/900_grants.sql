-- clickstream: redshift-only
-- clickstream: skip-if-exists
-- Read access for BI tools and dbt through one database role: GRANT ROLE ${reader_role} TO <user>.
-- Runs last, as the workflows' identity, which owns the schema and everything in it (it created them),
-- so it may grant. Re-run on every setup: views recreated by a migration get their grant back, and
-- default privileges cover objects this identity creates later.
-- CREATE ROLE has no IF NOT EXISTS: "already exists" counts as done (skip-if-exists above); the GRANTs
-- never fail that way, so any error of theirs still fails setup.
-- https://docs.aws.amazon.com/redshift/latest/dg/r_CREATE_ROLE.html
-- https://docs.aws.amazon.com/redshift/latest/dg/r_GRANT.html
-- https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_DEFAULT_PRIVILEGES.html
CREATE ROLE ${reader_role};

GRANT USAGE ON SCHEMA ${schema} TO ROLE ${reader_role};

GRANT SELECT ON ALL TABLES IN SCHEMA ${schema} TO ROLE ${reader_role};

ALTER DEFAULT PRIVILEGES IN SCHEMA ${schema} GRANT SELECT ON TABLES TO ROLE ${reader_role};
