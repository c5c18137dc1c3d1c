-- The provider account guard (mailerd/provider_guard.py, docs/guards.md "The provider guard").

-- What each provider account sent and heard back, per hour, across every campaign and node:
-- the writer adds one row per provider per flush, in its flush transaction (one statement,
-- never a scan of the log). The rolling 24 hours are the last 25 buckets (the current hour and
-- the 24 before it). Rows older than two days are deleted by the partition maintenance.
CREATE TABLE provider_usage (
    provider     text        NOT NULL,
    hour         timestamptz NOT NULL,
    sent         bigint      NOT NULL DEFAULT 0,
    hard_bounced bigint      NOT NULL DEFAULT 0,
    complained   bigint      NOT NULL DEFAULT 0,
    blocked      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, hour)
);

-- Every hold the provider guard put on a provider account, and its release by an operator (the
-- override: who, why, when). A provider is held while it has a row with released_at NULL; its
-- campaigns may not start or resume meanwhile. The release keeps the counters of its hour bucket
-- at that moment: the guard's baseline, so it judges only what is sent after the release.
CREATE TABLE provider_holds (
    id                   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider             text        NOT NULL,
    signal               text        NOT NULL,
    reason               text        NOT NULL,
    since                timestamptz NOT NULL DEFAULT now(),
    released_at          timestamptz,
    released_by          text,
    release_reason       text,
    base_hour            timestamptz,
    base_sent            bigint      NOT NULL DEFAULT 0,
    base_hard_bounced    bigint      NOT NULL DEFAULT 0,
    base_complained      bigint      NOT NULL DEFAULT 0,
    base_blocked         bigint      NOT NULL DEFAULT 0,
    CHECK ((released_at IS NULL) = (release_reason IS NULL))
);
CREATE UNIQUE INDEX provider_holds_active_key ON provider_holds (provider) WHERE released_at IS NULL;
CREATE INDEX provider_holds_released_idx ON provider_holds (provider, released_at DESC)
    WHERE released_at IS NOT NULL;
