-- Every change of a campaign's status bumps its status generation and is recorded once.
-- A pause that a node decides on its own (a provider halt, an error rate) names the generation
-- it saw when it claimed the campaign: if anything changed the status since (an operator's
-- pause and resume), the stale pause matches nothing and is dropped.
ALTER TABLE campaigns ADD COLUMN status_generation bigint NOT NULL DEFAULT 0;

-- Append only: who or what changed the status, and why. The event stream publishes it
-- (campaign records); tx is the writing transaction's id, the relay's commit-safe order.
CREATE TABLE campaign_changes (
    campaign_id      bigint      NOT NULL,
    generation       bigint      NOT NULL,
    account_id       bigint      NOT NULL,
    status           text        NOT NULL,
    previous_status  text,
    cause            text        NOT NULL,
    reason           text,
    at               timestamptz NOT NULL DEFAULT now(),
    tx               bigint      NOT NULL DEFAULT txid_current(),
    PRIMARY KEY (campaign_id, generation)
);
CREATE INDEX campaign_changes_tx_idx ON campaign_changes USING brin (tx) WITH (pages_per_range = 32, autosummarize = on);

-- Campaigns created before this migration start their history here.
INSERT INTO campaign_changes (campaign_id, generation, account_id, status, previous_status, cause, reason, at)
SELECT id, 0, account_id, status, NULL, 'migration', status_reason, updated_at FROM campaigns;
