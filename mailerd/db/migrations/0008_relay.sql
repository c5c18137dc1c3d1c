-- The relay: the hot log and the provider events are its outbox (docs/architecture.md, "The relay").
--
-- Every outbox row carries the id of the transaction that wrote it (txid_current(): 64 bits, with
-- the epoch). The relay compares it with txid snapshots, PgQ's method, so a row becomes eligible
-- only once no transaction that could commit before it is still running, and a slow writer's rows
-- are read when it commits, never skipped.
--
-- Rows written before this migration read tx = 0 (a constant default is stored once in the
-- catalog: no table rewrite, no long lock on a big log); rows written after get txid_current().
-- A new destination starts after tx 0, so those older rows are reached with `mailerd relay replay`.
ALTER TABLE email_log ADD COLUMN tx bigint NOT NULL DEFAULT 0;
ALTER TABLE email_log ALTER COLUMN tx SET DEFAULT txid_current();
ALTER TABLE email_events ADD COLUMN tx bigint NOT NULL DEFAULT 0;
ALTER TABLE email_events ALTER COLUMN tx SET DEFAULT txid_current();

-- BRIN: almost free on insert (the hot log keeps one btree), and the relay reads the newest,
-- not yet summarised ranges. Transaction ids grow with time, so they follow the physical order
-- of an append-only table closely enough for 32-page ranges to skip what was already passed.
CREATE INDEX email_log_tx_idx ON email_log USING brin (tx) WITH (pages_per_range = 32, autosummarize = on);
CREATE INDEX email_events_tx_idx ON email_events USING brin (tx) WITH (pages_per_range = 32, autosummarize = on);

-- One row per destination: the txid snapshot up to which everything was delivered and
-- acknowledged. A transaction is passed when tx < tx_xmax and tx is not in tx_xip
-- (xmin and xmax are system column names, hence the prefix). epoch fences a node
-- that lost the relay lock: its position updates then match no row.
CREATE TABLE relay_positions (
    destination    text        PRIMARY KEY,
    tx_xmin        bigint      NOT NULL,
    tx_xmax        bigint      NOT NULL,
    tx_xip         bigint[]    NOT NULL DEFAULT '{}',
    epoch          bigint      NOT NULL DEFAULT 0,
    owner          text,
    -- everything committed before this moment has been delivered (lag in seconds is now - as_of)
    as_of          timestamptz NOT NULL DEFAULT now(),
    published      bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_error     text,
    last_error_at  timestamptz,
    CHECK (tx_xmin <= tx_xmax)
);

-- Records a destination refused for good (a callback endpoint answering 400, a record too large
-- for the broker): kept here for `mailerd relay replay --dead-letters`, while the stream moves on.
-- record is the JSON exactly as it was sent.
CREATE TABLE relay_dead_letters (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination  text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    record_id    text        NOT NULL,
    kind         text        NOT NULL,
    account_id   bigint,
    lead_id      bigint,
    record       json        NOT NULL,
    error        text        NOT NULL,
    replayed_at  timestamptz
);
CREATE INDEX relay_dead_letters_pending_idx ON relay_dead_letters (destination, id) WHERE replayed_at IS NULL;
-- Erasure deletes a lead's dead letters too (they hold its address).
CREATE INDEX relay_dead_letters_lead_idx ON relay_dead_letters (account_id, lead_id);
