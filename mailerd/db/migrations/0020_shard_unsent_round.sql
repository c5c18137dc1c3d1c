-- A windowed campaign's zone shards read a lead's zone when they reach it, so a lead whose zone
-- changed can be passed by every shard. When all of them are done, the scheduler looks for the
-- leads left unsent and gives them shards of their zone (mailerd/splitting.py finish_windowed):
-- 0 for the split's shards, n for those the n-th such check added (a few at most: the checks
-- stop there, so leads that keep changing cannot keep a campaign running).
ALTER TABLE campaign_shards ADD COLUMN unsent_round smallint NOT NULL DEFAULT 0;
