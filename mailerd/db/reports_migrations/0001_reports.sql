-- The reports database (docs/reports.md): what the relay loads, indexed for reading, with rollups.
-- Its own migrations (`mailerd reports migrate`); it shares no table with the main database.
--
-- report_emails / report_events: one row per record, partitioned by month on the record's time
-- (sent_at / received_at, never changed, so a record delivered twice lands on the same key and
-- changes nothing). A default partition refuses no row; the loader creates each month's
-- partition before it loads a row of that month, and retention drops whole months.

CREATE TABLE report_emails (
    campaign_id          bigint      NOT NULL,
    lead_id              bigint      NOT NULL,
    sent_at              timestamptz NOT NULL,
    account_id           bigint,
    address              text,            -- lower-cased; NULL once erased (or the lead was gone)
    domain               text,            -- the address's domain (kept after an erasure)
    provider             text,
    provider_message_id  text,
    status               text        NOT NULL,  -- sent, failed, unknown, suppressed
    reason               text,
    loaded_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, lead_id, sent_at)  -- the record id, email:{campaign}:{lead}
) PARTITION BY RANGE (sent_at);
CREATE TABLE report_emails_default PARTITION OF report_emails DEFAULT;
CREATE INDEX report_emails_campaign_status ON report_emails (campaign_id, status, lead_id);
CREATE INDEX report_emails_lead ON report_emails (account_id, lead_id, sent_at);
CREATE INDEX report_emails_address ON report_emails (address, sent_at) WHERE address IS NOT NULL;
CREATE INDEX report_emails_message ON report_emails (provider_message_id) WHERE provider_message_id IS NOT NULL;

CREATE TABLE report_events (
    provider             text        NOT NULL,
    provider_event_id    text        NOT NULL,
    received_at          timestamptz NOT NULL,
    type                 text        NOT NULL,  -- delivered, hard_bounce, soft_bounce, complaint, unsubscribe
    account_id           bigint,
    campaign_id          bigint,
    lead_id              bigint,
    address              text,
    domain               text,
    provider_message_id  text,
    provider_type        text,
    reason               text,
    smtp_status          text,
    occurred_at          timestamptz NOT NULL,
    loaded_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_event_id, received_at)  -- the record id, event:{provider}:{id}
) PARTITION BY RANGE (received_at);
CREATE TABLE report_events_default PARTITION OF report_events DEFAULT;
CREATE INDEX report_events_campaign_type ON report_events (campaign_id, type, lead_id);
CREATE INDEX report_events_lead ON report_events (account_id, lead_id, occurred_at);
CREATE INDEX report_events_address ON report_events (address, occurred_at) WHERE address IS NOT NULL;
CREATE INDEX report_events_message ON report_events (provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Rollups: kept up to date in the transaction that loads the rows (only rows actually inserted
-- count). Emails count by their outcome at sent_at; events by their type at occurred_at.
CREATE TABLE report_campaign_minutes (
    campaign_id   bigint      NOT NULL,
    minute        timestamptz NOT NULL,
    sent          integer     NOT NULL DEFAULT 0,
    failed        integer     NOT NULL DEFAULT 0,
    unknown       integer     NOT NULL DEFAULT 0,
    suppressed    integer     NOT NULL DEFAULT 0,
    delivered     integer     NOT NULL DEFAULT 0,
    bounced_hard  integer     NOT NULL DEFAULT 0,
    bounced_soft  integer     NOT NULL DEFAULT 0,
    complained    integer     NOT NULL DEFAULT 0,
    unsubscribed  integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, minute)
);

CREATE TABLE report_campaign_domains (
    campaign_id   bigint  NOT NULL,
    domain        text    NOT NULL,
    sent          integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    unknown       integer NOT NULL DEFAULT 0,
    suppressed    integer NOT NULL DEFAULT 0,
    delivered     integer NOT NULL DEFAULT 0,
    bounced_hard  integer NOT NULL DEFAULT 0,
    bounced_soft  integer NOT NULL DEFAULT 0,
    complained    integer NOT NULL DEFAULT 0,
    unsubscribed  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, domain)
);

CREATE TABLE report_account_days (
    account_id    bigint NOT NULL,
    day           date   NOT NULL,  -- UTC
    sent          bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    unknown       bigint NOT NULL DEFAULT 0,
    suppressed    bigint NOT NULL DEFAULT 0,
    delivered     bigint NOT NULL DEFAULT 0,
    bounced_hard  bigint NOT NULL DEFAULT 0,
    bounced_soft  bigint NOT NULL DEFAULT 0,
    complained    bigint NOT NULL DEFAULT 0,
    unsubscribed  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);

-- Bounce reasons per campaign; addresses in the diagnostic are replaced by <address> so that
-- one reason groups every recipient (and no address is kept here).
CREATE TABLE report_bounce_reasons (
    campaign_id  bigint      NOT NULL,
    bounce       text        NOT NULL,  -- hard, soft
    smtp_status  text        NOT NULL,  -- '' when the provider gave none
    reason       text        NOT NULL,
    count        integer     NOT NULL DEFAULT 0,
    last_at      timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, bounce, smtp_status, reason)
);

-- The latest status of each campaign (campaign records, newest generation wins).
CREATE TABLE report_campaigns (
    campaign_id  bigint      PRIMARY KEY,
    account_id   bigint      NOT NULL,
    generation   bigint      NOT NULL,
    status       text        NOT NULL,
    at           timestamptz NOT NULL
);

-- Erasures applied (erasure records), so a record delivered twice is applied once.
CREATE TABLE report_erasures (
    id          text        PRIMARY KEY,  -- erasure:{id}
    account_id  bigint      NOT NULL,
    at          timestamptz NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
