-- Version 12 (issue 12, message trace): who each message came from and went to, kept as long
-- as its events ([secure] audit_days), so that `secmail messages` and the admin API find a
-- message by sender, recipient or time after its content and secure envelopes are gone (the
-- retention job deletes them after retention_days), and a relayed recipient after its queue
-- row is delivered. Addresses, levels and times only: never a subject, a body or a token.
-- A node of version 8 still runs against it (a rolling upgrade), but the messages it takes
-- meanwhile get no trace.
-- compat-floor: 7

CREATE TABLE traces (
    message_id TEXT PRIMARY KEY,
    received {bigint} NOT NULL,        -- unix seconds
    sender TEXT NOT NULL,              -- the envelope sender, lower-cased ('' for <>)
    kind TEXT NOT NULL                 -- mail, compose
);
CREATE INDEX traces_received ON traces(received);
CREATE INDEX traces_sender ON traces(sender, received);

CREATE TABLE trace_recipients (
    message_id TEXT NOT NULL,
    address TEXT NOT NULL,             -- the real address, lower-cased
    original TEXT NOT NULL,            -- the address as the mail server gave it, lower-cased
    level TEXT NOT NULL,               -- letter, registered; relay, compose (sent on in the clear)
    envelope_id TEXT                   -- the secure envelope; NULL for a relayed recipient
);
CREATE INDEX trace_recipients_message ON trace_recipients(message_id);
CREATE INDEX trace_recipients_address ON trace_recipients(address);
CREATE INDEX trace_recipients_original ON trace_recipients(original);
CREATE INDEX trace_recipients_envelope ON trace_recipients(envelope_id);

-- The messages already stored, with their secure recipients (those of a relay still in the
-- queue are in a JSON list there and are not copied: such a message shows no relay recipient).
INSERT INTO traces (message_id, received, sender, kind)
    SELECT id, created, LOWER(sender), kind FROM messages WHERE kind IN ('mail', 'compose');
INSERT INTO trace_recipients (message_id, address, original, level, envelope_id)
    SELECT e.message_id, LOWER(e.recipient), LOWER(e.original), e.level, e.id
    FROM envelopes e JOIN traces t ON t.message_id = e.message_id;

-- A trace shows whether a letter's notification is still waiting in the queue.
CREATE INDEX queue_about ON queue(about);
