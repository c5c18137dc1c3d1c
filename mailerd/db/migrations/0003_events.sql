-- Provider events (webhooks): de-duplication, address look-ups, soft-bounce counting, audit.

-- Each provider event is recorded once: its receipt key (event id + recipient) is claimed here
-- in the same transaction that appends it to email_events. Pruned after the retention period.
CREATE TABLE webhook_receipts (
    provider     text        NOT NULL,
    receipt      text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, receipt)
);
CREATE INDEX webhook_receipts_received_at_idx ON webhook_receipts (received_at);

-- An event with no metadata and no known message id is matched by address alone, in every
-- account that has the address as a lead: leads_email_account_key (lower(email), account_id)
-- serves that look-up, so leads keep two indexes.

-- Soft bounces of an address within the window decide its suppression.
CREATE INDEX email_events_soft_bounce_idx ON email_events (account_id, email, received_at)
    WHERE kind = 'soft_bounce';

-- Who put an address on (or took it off) a suppression list, and why.
CREATE TABLE suppression_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint      NOT NULL,
    email       text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('added', 'removed')),
    reason      text        NOT NULL,
    source      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX suppression_audit_account_email_idx ON suppression_audit (account_id, email);
