-- Guard baselines that tell a late bounce from a new one (docs/guards.md "Resuming" and
-- "Reading and releasing a hold").
--
-- After an operator's resume (campaign guard) or release (provider guard) the guard judges only
-- the emails sent from then on. Their count is the counters less a baseline; a bounce or a
-- complaint counts only when its email's log row was committed after the baseline: its
-- transaction (email_log.tx) is not visible in the txid snapshot taken with the baseline (no
-- clock is compared). Bounces of emails sent before it, arriving late, are left out of the
-- guard's counts; a rate above 100 % (1,100 bounces "of" 1,000 clean sends) is impossible.
-- since is when the baseline was taken: the log row is looked up in the partitions from a day
-- before it only (index probes on a few partitions, never a scan).
--
-- NULL (never resumed or released, or before this migration): every event counts, as before.
ALTER TABLE campaign_stats
    ADD COLUMN guard_since    timestamptz,
    ADD COLUMN guard_snapshot txid_snapshot;

ALTER TABLE provider_holds
    ADD COLUMN base_snapshot txid_snapshot;
