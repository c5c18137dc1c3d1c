-- SQL helpers for compiled segments (mailerd/segments.py). Forward only.

-- A strict ISO-8601 date or date-time string as a timestamptz, or NULL when the text is not one.
-- Accepted: YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|+HH:MM|-HH:MM]
-- (no offset means UTC), ASCII digits only, year 0001-9999, a real calendar day, hours 00-23,
-- minutes and seconds 00-59, offsets up to 15:59. Never raises, whatever the input: segments
-- call it on lead data. The same rules as segments._parse_iso in Python; change both together.
-- Written without regular expressions and exception blocks: Postgres runs this regex at about
-- 4 us a row and an exception block opens a subtransaction, while a segment may scan millions.
CREATE FUNCTION mailerd_iso_timestamptz(value text) RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    shape text := translate(value, '012345678', '999999999');
    zone int := CASE WHEN right(shape, 1) = 'Z' THEN 1
                     WHEN right(shape, 6) IN ('+99:99', '-99:99') THEN 6
                     ELSE 0 END;
    core int := length(shape) - zone;
    y int; mo int; d int; last_day int;
    h int := 0; mi int := 0; s int := 0; us int := 0;
    offset_h int := 0; offset_m int := 0;
BEGIN
    IF left(shape, core) NOT IN (
            '9999-99-99', '9999-99-99T99:99', '9999-99-99T99:99:99',
            '9999-99-99T99:99:99.9', '9999-99-99T99:99:99.99', '9999-99-99T99:99:99.999',
            '9999-99-99T99:99:99.9999', '9999-99-99T99:99:99.99999',
            '9999-99-99T99:99:99.999999')
        OR (zone > 0 AND core = 10) THEN
        RETURN NULL;
    END IF;
    y := substr(value, 1, 4);
    mo := substr(value, 6, 2);
    d := substr(value, 9, 2);
    IF core > 10 THEN
        h := substr(value, 12, 2);
        mi := substr(value, 15, 2);
    END IF;
    IF core > 16 THEN
        s := substr(value, 18, 2);
    END IF;
    IF core > 19 THEN
        us := rpad(substr(value, 21, core - 20), 6, '0');
    END IF;
    IF zone = 6 THEN
        offset_h := substr(value, core + 2, 2);
        offset_m := substr(value, core + 5, 2);
        IF substr(value, core + 1, 1) = '-' THEN
            offset_h := -offset_h;
            offset_m := -offset_m;
        END IF;
    END IF;
    last_day := CASE WHEN mo IN (4, 6, 9, 11) THEN 30
                     WHEN mo <> 2 THEN 31
                     WHEN y % 4 = 0 AND (y % 100 <> 0 OR y % 400 = 0) THEN 29
                     ELSE 28 END;
    IF y < 1 OR mo < 1 OR mo > 12 OR d < 1 OR d > last_day OR h > 23 OR mi > 59 OR s > 59
        OR abs(offset_h) > 15 OR abs(offset_m) > 59 THEN
        RETURN NULL;
    END IF;
    RETURN timezone(make_interval(hours => offset_h, mins => offset_m),
                    make_timestamp(y, mo, d, h, mi, 0) + (s * 1000000 + us) * interval '1 microsecond');
END
$$;
