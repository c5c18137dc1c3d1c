-- A campaign's totals for its whole life, kept apart from the per-minute series.
--
-- The report's totals were the sum of report_campaign_minutes, which retention trims: past
-- retention_days a campaign's totals (and its rates) shrank to what was left of its series while
-- its domains (a lifetime rollup) and its emails still counted everything. One row per campaign,
-- added to by each load as the other rollups are; filled here from the domains rollup, which
-- counts every record of a campaign (an address without a domain under '').

CREATE TABLE report_campaign_totals (
    campaign_id   bigint  PRIMARY KEY,
    sent          bigint  NOT NULL DEFAULT 0,
    failed        bigint  NOT NULL DEFAULT 0,
    unknown       bigint  NOT NULL DEFAULT 0,
    suppressed    bigint  NOT NULL DEFAULT 0,
    delivered     bigint  NOT NULL DEFAULT 0,
    bounced_hard  bigint  NOT NULL DEFAULT 0,
    bounced_soft  bigint  NOT NULL DEFAULT 0,
    complained    bigint  NOT NULL DEFAULT 0,
    unsubscribed  bigint  NOT NULL DEFAULT 0
);

INSERT INTO report_campaign_totals
SELECT campaign_id, sum(sent), sum(failed), sum(unknown), sum(suppressed), sum(delivered),
       sum(bounced_hard), sum(bounced_soft), sum(complained), sum(unsubscribed)
FROM report_campaign_domains GROUP BY campaign_id;
