-- Suppressions of leads whose domain is an IDN, in the lead's own spelling.
--
-- SES and SMTP servers are sent a Unicode domain in IDNA A-labels (user@bücher.de goes out as
-- user@xn--bcher-kva.de), and their bounces, complaints and unsubscribes name it that way. Until
-- 2026-12-07 the suppression was stored as reported, and held nobody: the lead stream compares
-- suppressions with lower(leads.email), the Unicode spelling. Events now take their lead's
-- spelling; this adds it beside each suppression stored before, found through the events that
-- made it (they name their lead): same account, same local part, the reported domain ASCII and
-- the lead's not (IDNA 2003 also maps some domains without an xn-- label: straße.de is sent as
-- strasse.de). The reported entry stays as it is; a removal by address takes both spellings.
WITH found AS (
    SELECT DISTINCT ON (s.account_id, lower(l.email))
           s.account_id, lower(l.email) AS email, s.reason, s.source, s.at
    FROM suppressions s
    JOIN email_events e ON e.account_id = s.account_id AND e.email = s.email
    JOIN leads l ON l.account_id = e.account_id AND l.id = e.lead_id
    WHERE e.lead_id IS NOT NULL
      AND lower(l.email) <> s.email
      AND substring(lower(l.email) FROM '^(.*)@') = substring(s.email FROM '^(.*)@')
      AND substring(s.email FROM '@([^@]*)$') ~ '^[ -~]+$'
      AND substring(l.email FROM '@([^@]*)$') !~ '^[ -~]+$'
    ORDER BY s.account_id, lower(l.email), s.at
), added AS (
    INSERT INTO suppressions (account_id, email, reason, source, at)
    SELECT account_id, email, reason, source, at FROM found
    ON CONFLICT DO NOTHING
    RETURNING account_id, email, reason
)
INSERT INTO suppression_audit (account_id, email, action, reason, source)
SELECT account_id, email, 'added', reason, 'migration 0019' FROM added;
