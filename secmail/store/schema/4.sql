-- Version 4: registered letters: SMS PINs, the SMS outbox, the phone directory.
-- PINs are kept like e-mail codes, in access_codes (HMAC only; used = 2: replaced by a newer
-- PIN, told apart from a wrong one); a registered letter uses no
-- other kind of code, so the two never mix.

ALTER TABLE envelopes ADD COLUMN pin_failures INTEGER NOT NULL DEFAULT 0;  -- wrong PINs in all
ALTER TABLE envelopes ADD COLUMN locked {bigint};       -- locked after too many wrong PINs
ALTER TABLE envelopes ADD COLUMN wrong_number {bigint}; -- the recipient said the number is not theirs

CREATE TABLE sms_outbox (
    id {serial},
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,  -- whose events record it
    envelope_id TEXT REFERENCES envelopes(id) ON DELETE CASCADE,
    number TEXT NOT NULL,                               -- international form, +<digits>
    text {blob} NOT NULL,                               -- AES-GCM sealed: it carries the PIN
    created {bigint} NOT NULL,
    expires {bigint} NOT NULL,                          -- useless after this (the PIN's lifetime)
    next_attempt {bigint} NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    lease_owner TEXT,
    lease_until {bigint}
);
CREATE INDEX sms_outbox_due ON sms_outbox(next_attempt);
CREATE INDEX sms_outbox_envelope ON sms_outbox(envelope_id);

CREATE TABLE phones (
    address TEXT PRIMARY KEY,                           -- lower-cased e-mail address
    number TEXT NOT NULL,                               -- international form, +<digits>
    updated {bigint} NOT NULL
);

-- The retention job prunes the audit trail by age (secure.audit_days).
CREATE INDEX events_at ON events(at);
