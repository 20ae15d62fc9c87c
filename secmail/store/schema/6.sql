-- Version 6 (issue 10, portal hardening): D-Compose code limits per normalised mailbox, per
-- client and in total, and a lock per mailbox after too many wrong codes.
-- (envelopes.pin_failures, from version 4, now counts a letter's wrong e-mail codes as well
-- as its wrong PINs; envelopes.locked is set when either reaches the limit.)

ALTER TABLE compose_codes ADD COLUMN mailbox TEXT NOT NULL DEFAULT '';  -- lower-case, +tag removed
ALTER TABLE compose_codes ADD COLUMN client TEXT NOT NULL DEFAULT '';   -- IPv4 address or IPv6 /64
UPDATE compose_codes SET mailbox = address;
CREATE INDEX compose_codes_mailbox ON compose_codes(mailbox, created);
CREATE INDEX compose_codes_client ON compose_codes(client, created);
CREATE INDEX compose_codes_created ON compose_codes(created);

CREATE TABLE compose_mailboxes (
    mailbox TEXT PRIMARY KEY,                           -- normalised, as compose_codes.mailbox
    failures INTEGER NOT NULL DEFAULT 0,                -- wrong codes since the last lock
    locked {bigint}                                     -- when too many wrong codes locked it
);

-- One row that every code order updates first: on PostgreSQL the orders of all nodes wait
-- for each other here, so each counts what the others committed before it inserts.
CREATE TABLE compose_guard (
    id INTEGER PRIMARY KEY,
    orders {bigint} NOT NULL
);
INSERT INTO compose_guard (id, orders) VALUES (1, 0);
