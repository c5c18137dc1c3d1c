-- What the writer could not store, kept for an operator instead of being retried forever.
-- A flush that fails for a reason other than losing the database is split until the entries
-- that cause it are found; each is recorded here (the rest of the flush commits as usual).
-- kind 'emails': one sent batch's email_log rows (the shard's checkpoint moves past them in
-- the same transaction, so they are never sent again); kind 'events': one webhook's events,
-- refused with a 4xx. payload is the entry as JSON text (text, not jsonb: it must hold what
-- Postgres refused, e.g. a NUL, escaped).
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flush_id     uuid        NOT NULL UNIQUE,
    at           timestamptz NOT NULL DEFAULT now(),
    kind         text        NOT NULL CHECK (kind IN ('emails', 'events')),
    campaign_id  bigint,
    shard_no     integer,
    seq          bigint,
    entries      integer     NOT NULL,
    sqlstate     text,
    error        text        NOT NULL,
    payload      text        NOT NULL
);
CREATE INDEX dead_letters_at_idx ON dead_letters (at);
CREATE INDEX dead_letters_campaign_idx ON dead_letters (campaign_id) WHERE campaign_id IS NOT NULL;
