-- Applied migrations: one row per migration statement (`<migration>#<n>`), with the checksum of
-- its text, and one row for the streaming view's definition. A statement whose checksum changed
-- after it was applied stops setup: add a new migration instead of editing an applied one.
CREATE TABLE IF NOT EXISTS ${schema}.schema_migrations (
    name VARCHAR(128) NOT NULL,
    checksum VARCHAR(32) NOT NULL,
    applied_at TIMESTAMP NOT NULL
);
