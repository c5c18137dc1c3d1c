-- SMTP rejections in the guards' sample (docs/guards.md "SMTP rejections", "The campaign guard").
--
-- An email the receiver's SMTP server refuses (5xx, or 4xx until the attempts ran out) is logged
-- failed, not sent, and its rejection is recorded as a bounce event in the same flush: it counts
-- in hard_bounced or blocked. The guards divided by sent alone, so a campaign whose receivers
-- refused more than they took was judged above 100 % (1,100 rejections "of" 1,000 sent), and one
-- refused by every receiver was never judged (0 sent). rejected counts those failed emails (one
-- per rejection event, kept in the same flush); the guards' sample is sent + rejected.
ALTER TABLE campaign_stats
    ADD COLUMN rejected       bigint NOT NULL DEFAULT 0,
    ADD COLUMN guard_rejected bigint NOT NULL DEFAULT 0;

ALTER TABLE provider_usage
    ADD COLUMN rejected bigint NOT NULL DEFAULT 0;

ALTER TABLE provider_holds
    ADD COLUMN base_rejected bigint NOT NULL DEFAULT 0;
