-- Suppressions of leads whose domain is an IDN, in the lead's own spelling.
--
-- SES and SMTP servers are sent a Unicode domain in IDNA A-labels (user@bücher.de goes out as
-- user@xn--bcher-kva.de), and their bounces, complaints and unsubscribes name it that way. Until
-- 2026-12-07 the suppression was stored as reported, and held nobody: the lead stream compares
-- suppressions with lower(leads.email), the Unicode spelling. Events now take their lead's
-- spelling; this adds the Unicode spelling (NFC, lower case) beside each suppression stored
-- before with an xn-- label. The reported entry stays as it is; a removal by address takes both.
--
-- It reads the suppressions alone (not the events that made them: a scan of every event
-- partition while no node may start), decoding the labels with RFC 3492's algorithm below,
-- a function of this transaction only. A domain IDNA 2003 maps without an xn-- label
-- (straße.de is sent as strasse.de) cannot be told from an ASCII one here and is left as it is.
CREATE OR REPLACE FUNCTION pg_temp.punycode_label(label text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    base_end int := 0;
    output int[] := '{}';
    n bigint := 128;
    i bigint := 0;
    bias int := 72;
    pos int;
    oldi bigint;
    w bigint;
    k int;
    t int;
    digit int;
    c int;
    delta bigint;
    points int;
BEGIN
    -- RFC 3492 section 6.2; label without its xn-- prefix, lower case
    base_end := length(label) - strpos(reverse(label), '-') + 1;
    IF strpos(label, '-') = 0 THEN
        base_end := 0;
    END IF;
    FOR pos IN 1 .. base_end - 1 LOOP
        output := output || ascii(substr(label, pos, 1));
    END LOOP;
    pos := CASE WHEN base_end > 0 THEN base_end + 1 ELSE 1 END;
    WHILE pos <= length(label) LOOP
        oldi := i;
        w := 1;
        k := 36;
        LOOP
            IF pos > length(label) THEN
                RETURN NULL;
            END IF;
            c := ascii(substr(label, pos, 1));
            pos := pos + 1;
            digit := CASE WHEN c BETWEEN 97 AND 122 THEN c - 97
                          WHEN c BETWEEN 48 AND 57 THEN c - 22
                          ELSE NULL END;
            IF digit IS NULL THEN
                RETURN NULL;
            END IF;
            i := i + digit * w;
            IF i > 2147483647 THEN
                RETURN NULL;  -- no code point is that far: not a label we sent
            END IF;
            t := CASE WHEN k <= bias THEN 1 WHEN k >= bias + 26 THEN 26 ELSE k - bias END;
            EXIT WHEN digit < t;
            w := w * (36 - t);
            IF w > 2147483647 THEN
                RETURN NULL;
            END IF;
            k := k + 36;
        END LOOP;
        points := coalesce(array_length(output, 1), 0) + 1;
        delta := CASE WHEN oldi = 0 THEN (i - oldi) / 700 ELSE (i - oldi) / 2 END;
        delta := delta + delta / points;
        k := 0;
        WHILE delta > 455 LOOP
            delta := delta / 35;
            k := k + 36;
        END LOOP;
        bias := k + (36 * delta) / (delta + 38);
        n := n + i / points;
        i := i % points;
        IF n > 1114111 OR n BETWEEN 55296 AND 57343 THEN
            RETURN NULL;
        END IF;
        output := output[1:i] || n::int || output[i + 1:];
        i := i + 1;
    END LOOP;
    RETURN (SELECT string_agg(chr(x), '' ORDER BY o) FROM unnest(output) WITH ORDINALITY AS u(x, o));
END
$$;

-- The domain with its xn-- labels decoded; NULL when one is not a label IDNA makes (a valid
-- one decodes to a name with a character beyond ASCII).
CREATE OR REPLACE FUNCTION pg_temp.u_label_domain(domain text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN bool_and(decoded IS NOT NULL) THEN string_agg(decoded, '.' ORDER BY n) END
    FROM (
        SELECT n, CASE WHEN label NOT LIKE 'xn--%' THEN label
                       WHEN pg_temp.punycode_label(substr(label, 5)) ~ '[^\x01-\x7f]'
                       THEN pg_temp.punycode_label(substr(label, 5)) END AS decoded
        FROM unnest(string_to_array(lower(domain), '.')) WITH ORDINALITY AS l(label, n)
    ) labels
$$;

WITH found AS (
    SELECT account_id, email, reason, source, at,
           substring(email FROM '^(.*)@') || '@'
               || normalize(pg_temp.u_label_domain(substring(email FROM '@([^@]*)$')), NFC) AS spelled
    FROM suppressions
    WHERE email LIKE '%@%xn--%'
), added AS (
    INSERT INTO suppressions (account_id, email, reason, source, at)
    SELECT account_id, lower(spelled), reason, source, at FROM found
    WHERE spelled IS NOT NULL AND lower(spelled) <> email
    ON CONFLICT DO NOTHING
    RETURNING account_id, email, reason
)
INSERT INTO suppression_audit (account_id, email, action, reason, source)
SELECT account_id, email, 'added', reason, 'migration 0019' FROM added;

DROP FUNCTION pg_temp.u_label_domain(text);
DROP FUNCTION pg_temp.punycode_label(text);
