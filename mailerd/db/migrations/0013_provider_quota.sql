-- Daily quotas and warm-up schedules (mailerd/quota.py, docs/guards.md "Daily quota and warm-up").

-- What the nodes reserved of each provider's quota, per hour: a node reserves a block before it
-- sends (under the provider's advisory lock, so the nodes never reserve more than the quota
-- together) and gives back what it did not use when it stops. The rolling 24 hours are the last
-- 25 buckets, like provider_usage; warm-up days are the buckets since the day's UTC midnight.
-- Rows older than two days are deleted by the partition maintenance.
CREATE TABLE provider_quota_hours (
    provider text        NOT NULL,
    hour     timestamptz NOT NULL,
    reserved bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (provider, hour)
);

-- Each provider's quota as the last reservation saw it: the limits in force (the operator's
-- daily_quota or the account's Max24HourSend, today's warm-up cap), what was reserved, and while
-- the quota is used up, until when and why: campaign status and GET /api/providers read it.
CREATE TABLE provider_quotas (
    provider         text        PRIMARY KEY,
    daily_limit      bigint,
    warmup_day       integer,
    warmup_limit     bigint,
    reserved_24h     bigint      NOT NULL DEFAULT 0,
    reserved_today   bigint      NOT NULL DEFAULT 0,
    exhausted_until  timestamptz,
    exhausted_reason text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
