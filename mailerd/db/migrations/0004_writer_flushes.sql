-- Each writer flush records its id in the same transaction as its rows. When the connection dies
-- during COMMIT, the writer cannot tell whether the flush committed; before writing the same rows
-- again it looks its id up here, so no email gets two log rows. Kept one day.
CREATE TABLE writer_flushes (
    id  uuid        PRIMARY KEY,
    at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX writer_flushes_at_idx ON writer_flushes (at);
