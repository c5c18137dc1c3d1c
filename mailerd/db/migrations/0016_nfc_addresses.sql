-- Addresses in Unicode's composed form (NFC), as every way in now writes them (RFC 6532).
--
-- An address typed decomposed ("jose" + U+0301) and the same one composed ("jos" + U+00E9) were
-- two leads, and a suppression of one did not hold the other. Since 2026-12-07 the API, the
-- imports and the suppression routes store NFC; this puts what was stored before in the same
-- form, so that a re-import finds its lead and a suppression keeps holding. Where an account
-- already has both forms (two leads, two suppressions), the decomposed one is left as it is
-- (an erasure by address takes both forms).
-- normalize() needs a UTF8 database (the only encoding mailerd supports); elsewhere nothing is
-- changed.
DO $$
BEGIN
    IF current_setting('server_encoding') <> 'UTF8' THEN
        RETURN;
    END IF;
    -- One row per account and composed address (two decomposed spellings of one address would
    -- otherwise collide), then only where that address is not stored composed already.
    CREATE TEMP TABLE nfc_leads ON COMMIT DROP AS
        SELECT DISTINCT ON (account_id, lower(normalize(email, NFC))) id, account_id, normalize(email, NFC) AS nfc
        FROM leads WHERE email IS NOT NFC NORMALIZED
        ORDER BY account_id, lower(normalize(email, NFC)), id;
    -- Not in an account that keeps erased addresses suppressed as keyed hashes: a hash of the
    -- decomposed form would stop matching the rewritten lead, and an erased address be mailed
    -- again (the key to hash the composed form is not in the database).
    UPDATE leads l SET email = n.nfc FROM nfc_leads n
    WHERE l.id = n.id
      AND NOT EXISTS (SELECT 1 FROM leads o WHERE o.account_id = n.account_id AND lower(o.email) = lower(n.nfc))
      AND NOT EXISTS (SELECT 1 FROM erased_suppressions e WHERE e.account_id = n.account_id);
    CREATE TEMP TABLE nfc_suppressions ON COMMIT DROP AS
        SELECT DISTINCT ON (account_id, lower(normalize(email, NFC))) account_id, email, lower(normalize(email, NFC)) AS nfc
        FROM suppressions WHERE email IS NOT NFC NORMALIZED
        ORDER BY account_id, lower(normalize(email, NFC)), email;
    UPDATE suppressions s SET email = n.nfc FROM nfc_suppressions n
    WHERE s.account_id = n.account_id AND s.email = n.email
      AND NOT EXISTS (SELECT 1 FROM suppressions o WHERE o.account_id = n.account_id AND o.email = n.nfc);
    UPDATE suppression_audit SET email = normalize(email, NFC) WHERE email IS NOT NFC NORMALIZED;
END $$;
