-- SQL helpers for compiled segments (mailerd/segments.py). Forward only.

-- A strict ISO-8601 date or date-time string as a timestamptz, or NULL when the text is not one.
-- Accepted: YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|+HH:MM|-HH:MM]
-- (no offset means UTC), year 0001-9999, a real calendar day, hours 00-23, minutes and seconds
-- 00-59, offsets up to 15:59. Never raises, whatever the input: segments call it on lead data.
-- The acceptance rules are the same as segments._parse_iso in Python; change both together.
CREATE FUNCTION mailerd_iso_timestamptz(value text) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p.y IS NULL THEN NULL
        WHEN p.y < 1 OR p.mo NOT BETWEEN 1 AND 12 OR p.d < 1 OR p.d > CASE
                WHEN p.mo IN (4, 6, 9, 11) THEN 30
                WHEN p.mo <> 2 THEN 31
                WHEN p.y % 4 = 0 AND (p.y % 100 <> 0 OR p.y % 400 = 0) THEN 29
                ELSE 28
            END
            OR p.h > 23 OR p.mi > 59 OR p.s > 59 OR p.oh > 15 OR p.om > 59 THEN NULL
        ELSE timezone(
            make_interval(hours => p.sign * p.oh, mins => p.sign * p.om),
            make_timestamp(p.y, p.mo, p.d, p.h, p.mi, 0)
                + (p.s * 1000000 + p.us) * interval '1 microsecond')
    END
    FROM (
        SELECT m[1]::int AS y, m[2]::int AS mo, m[3]::int AS d,
               coalesce(m[4], '0')::int AS h, coalesce(m[5], '0')::int AS mi,
               coalesce(m[6], '0')::int AS s, rpad(coalesce(m[7], ''), 6, '0')::int AS us,
               CASE m[9] WHEN '-' THEN -1 ELSE 1 END AS sign,
               coalesce(m[10], '0')::int AS oh, coalesce(m[11], '0')::int AS om
        FROM (SELECT regexp_match(value,
            '^([0-9]{4})-([0-9]{2})-([0-9]{2})'
            '(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?'
            '(Z|([+-])([0-9]{2}):([0-9]{2}))?)?$') AS m) AS matched
    ) AS p
$$;
