-- Byte-safe truncation, as Segment truncates over-long values instead of dropping the event.
-- VARCHAR(n) counts bytes and refuses longer values (https://docs.aws.amazon.com/redshift/latest/dg/r_Character_types.html);
-- LEFT counts characters, so take the longest of n, n/2, n/3 or n/4 characters that fits in n
-- bytes (a UTF-8 character is 1 to 4 bytes): it never splits a character and keeps n characters of
-- ASCII. SQL UDF: https://docs.aws.amazon.com/redshift/latest/dg/udf-creating-a-scalar-sql-udf.html
CREATE OR REPLACE FUNCTION f_clickstream_truncate(VARCHAR(65535), INTEGER)
RETURNS VARCHAR(65535)
IMMUTABLE
AS $$
    SELECT CASE
        WHEN $1 IS NULL OR OCTET_LENGTH($1) <= $2 THEN $1
        WHEN OCTET_LENGTH(LEFT($1, $2)) <= $2 THEN LEFT($1, $2)
        WHEN OCTET_LENGTH(LEFT($1, $2 / 2)) <= $2 THEN LEFT($1, $2 / 2)
        WHEN OCTET_LENGTH(LEFT($1, $2 / 3)) <= $2 THEN LEFT($1, $2 / 3)
        ELSE LEFT($1, $2 / 4)
    END
$$ LANGUAGE sql;
