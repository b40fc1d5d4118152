-- clickstream: transaction
-- clickstream: redshift-only
-- The merge's session: quoted identifiers keep their case, so the staging step's PartiQL paths
-- ("userId", "receivedAt") match the record's camelCase attributes; unquoted names still fold to
-- lower case, as the rest of the model is written. SET lasts for the session, which is this one
-- BatchExecuteStatement. https://docs.aws.amazon.com/redshift/latest/dg/r_enable_case_sensitive_identifier.html
-- The procedure then fails the merge if a path still misses a camelCase attribute.
-- DuckDB's JSON paths are case-sensitive already, so the local model has no such setting.
SET enable_case_sensitive_identifier TO true;

CALL ${schema}.assert_case_sensitive_paths();
