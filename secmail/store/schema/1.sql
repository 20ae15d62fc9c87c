-- Version 1: messages, their encrypted chunks, secure envelopes, the outbound queue and events.
-- Written once for both engines; {blob}, {serial} and {bigint} are filled in by the engine.

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                -- secure, relay, notification, bounce
    sender TEXT NOT NULL,              -- envelope sender of the original ('' for <>)
    created {bigint} NOT NULL,         -- unix seconds
    size {bigint} NOT NULL,            -- plaintext bytes
    key_id TEXT NOT NULL,              -- which master key wraps the message key
    wrapped_key {blob} NOT NULL,
    chunk_count INTEGER NOT NULL
);

CREATE TABLE message_chunks (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (message_id, seq)
);

CREATE TABLE envelopes (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient TEXT NOT NULL,           -- the real address, marking stripped
    original TEXT NOT NULL,            -- the address as the mail server gave it
    level TEXT NOT NULL,               -- letter, registered
    phone TEXT,
    token_hash TEXT NOT NULL UNIQUE,   -- sha256 of the link token; the token itself is never stored
    created {bigint} NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX envelopes_message ON envelopes(message_id);

CREATE TABLE queue (
    id {serial},
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    about TEXT NOT NULL,               -- the message whose audit trail gets this row's events
    kind TEXT NOT NULL,                -- relay, notification, bounce
    sender TEXT NOT NULL,              -- envelope sender of this delivery ('' for <>)
    recipients TEXT NOT NULL,          -- JSON list of addresses
    route TEXT NOT NULL,               -- mx or smtp://host:port
    domain TEXT NOT NULL,              -- the recipients' domain (for mx)
    notify TEXT NOT NULL,              -- who is told when this delivery fails ('' for nobody)
    created {bigint} NOT NULL,
    next_attempt {bigint} NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    lease_owner TEXT,
    lease_until {bigint}
);
CREATE INDEX queue_due ON queue(next_attempt);
CREATE INDEX queue_message ON queue(message_id);

CREATE TABLE events (
    id {serial},
    message_id TEXT NOT NULL,
    envelope_id TEXT,
    at {bigint} NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_message ON events(message_id);
