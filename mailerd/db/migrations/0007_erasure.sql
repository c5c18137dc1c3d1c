-- Erasure (GDPR Article 17): every erasure is recorded without the address; an erased address
-- that was suppressed stays suppressed as a keyed hash (HMAC-SHA256 with [privacy] erasure_key
-- of lower(address)), so a later import of the same address is still not sent to.
CREATE TABLE erasures (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    bigint      NOT NULL,
    email_hashes  bytea[]     NOT NULL,
    lead_ids      bigint[]    NOT NULL,
    requested_by  text        NOT NULL,
    removed       jsonb       NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    tx            bigint      NOT NULL DEFAULT txid_current()
);
CREATE INDEX erasures_account_idx ON erasures (account_id, id);
CREATE INDEX erasures_tx_idx ON erasures USING brin (tx) WITH (pages_per_range = 32, autosummarize = on);

CREATE TABLE erased_suppressions (
    account_id  bigint      NOT NULL,
    email_hash  bytea       NOT NULL,
    reason      text        NOT NULL,
    erasure_id  bigint      NOT NULL REFERENCES erasures (id),
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, email_hash)
);

-- Webhook receipts hold no address any more: the de-duplication key is the SHA-256 (hex) of the
-- provider's event id and the recipient, so a redelivered event is still recognised after the
-- recipient was erased.
UPDATE webhook_receipts SET receipt = encode(sha256(convert_to(receipt, 'UTF8')), 'hex');
