-- Version 7: master key rotation. Which key of the ring sealed or HMACed each row (NULL: a
-- row from before version 7, made with the key that was current then), so that a retired
-- key is removed only when nothing uses it; and the key ids each node holds.

CREATE INDEX messages_key ON messages(key_id);
ALTER TABLE sms_outbox ADD COLUMN key_id TEXT;
ALTER TABLE access_codes ADD COLUMN key_id TEXT;
ALTER TABLE compose_codes ADD COLUMN key_id TEXT;

CREATE TABLE key_ring_nodes (
    node TEXT PRIMARY KEY,                              -- gateway.hostname/host name of a running node
    key_ids TEXT NOT NULL,                              -- the ids of its ring, newest first, comma-separated
    sealing TEXT NOT NULL,                              -- the id it seals new rows with
    seen {bigint} NOT NULL                              -- when it last said so
);
