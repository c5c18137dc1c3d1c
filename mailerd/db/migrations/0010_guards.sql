-- Deliverability guards (mailerd/bounces.py, mailerd/guards.py).

-- Why a bounce happened: invalid_recipient, mailbox_full, policy_block, reputation_block,
-- auth_failure, transient, unknown (NULL for events that are not bounces).
ALTER TABLE email_events ADD COLUMN bounce_class text;

-- Bounces that are not blocks count toward an address's repeat limit (only an invalid recipient
-- suppresses at once): the partial index covers both kinds.
DROP INDEX IF EXISTS email_events_soft_bounce_idx;
CREATE INDEX email_events_bounce_idx ON email_events (account_id, email, received_at)
    WHERE kind IN ('soft_bounce', 'hard_bounce');

-- The counters the campaign guard reads, kept in the writer's flush: hard bounces that are not
-- blocks, and blocks (policy, reputation, authentication) whatever the provider called them.
ALTER TABLE campaign_stats
    ADD COLUMN hard_bounced bigint NOT NULL DEFAULT 0,
    ADD COLUMN blocked      bigint NOT NULL DEFAULT 0;

-- The campaign guard reads the counters since its baseline: zero, until an operator resumes a
-- campaign the guard paused; then the counters of that moment (the guard starts over and needs
-- min_sample new emails before it judges again).
ALTER TABLE campaign_stats
    ADD COLUMN guard_sent         bigint NOT NULL DEFAULT 0,
    ADD COLUMN guard_hard_bounced bigint NOT NULL DEFAULT 0,
    ADD COLUMN guard_complained   bigint NOT NULL DEFAULT 0,
    ADD COLUMN guard_blocked      bigint NOT NULL DEFAULT 0;
