-- Evaluate the model once per run: both inserts below read this snapshot of `pending`.
DROP TABLE IF EXISTS ${schema}.staging;

CREATE TABLE ${schema}.staging AS SELECT * FROM ${schema}.pending;
