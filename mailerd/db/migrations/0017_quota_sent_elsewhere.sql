-- What the account sent beyond what the nodes reserved (SES SentLast24Hours, seed_rate_from_account)
-- is kept apart from the reservations (docs/guards.md "Daily quota and warm-up"): it counts
-- against the account's own quota (Max24HourSend) only, never against daily_quota (mailerd's
-- share of the account) nor the warm-up (what mailerd sends per UTC day). Added to reserved, it
-- counted against both: other senders' volume used up mailerd's share a second time.
--
-- Rows from before this migration keep in reserved what earlier reads added; they leave the
-- rolling window within 25 hours.
ALTER TABLE provider_quota_hours
    ADD COLUMN elsewhere bigint NOT NULL DEFAULT 0 CHECK (elsewhere >= 0);
