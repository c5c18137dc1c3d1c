-- Send windows (mailerd/windows.py): a campaign may send to a lead only within a window of the
-- lead's own local time. NULL: any time.
ALTER TABLE campaigns ADD COLUMN send_window jsonb;

-- A windowed campaign's shards are split per time zone: each carries its zone (NULL for a
-- campaign without a window), the zone names whose leads it sends (zones whose clocks agree
-- share shards; the default zone's shards send every lead of no other shard's names) and, while
-- the zone's window is closed, when it opens next. A shard is claimed only once not_before has
-- passed (and its window is open: checked again at claim).
ALTER TABLE campaign_shards
    ADD COLUMN zone       text,
    ADD COLUMN zone_names text[],
    ADD COLUMN not_before timestamptz;
