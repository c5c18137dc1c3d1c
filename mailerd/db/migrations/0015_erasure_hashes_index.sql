-- A provider event that arrives after its recipient was erased (a complaint or a bounce for an
-- email sent before) is stored scrubbed, as the erasure scrubbed the others: the writer looks up
-- the keyed hash of each event's address in the erasures of its account (of any account for an
-- event that matched none) at every flush that carries events with an address. fastupdate off:
-- erasures are rare, and every flush would otherwise scan the pending list.
CREATE INDEX erasures_email_hashes_idx ON erasures USING gin (email_hashes) WITH (fastupdate = off);
