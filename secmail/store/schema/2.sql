-- Version 2: the recipient portal: browser binding, sessions and one-time e-mail codes.

ALTER TABLE envelopes ADD COLUMN browser_hash TEXT;     -- sha256 of the browser cookie a letter is bound to
ALTER TABLE envelopes ADD COLUMN opened {bigint};       -- first explicit open

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,                           -- sha256 of the session cookie; the cookie is never stored
    envelope_id TEXT NOT NULL REFERENCES envelopes(id) ON DELETE CASCADE,
    created {bigint} NOT NULL,
    last_seen {bigint} NOT NULL,
    csrf TEXT NOT NULL
);
CREATE INDEX sessions_envelope ON sessions(envelope_id);

CREATE TABLE access_codes (
    envelope_id TEXT NOT NULL REFERENCES envelopes(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,                            -- HMAC of the code; the code is never stored
    created {bigint} NOT NULL,
    expires {bigint} NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX access_codes_envelope ON access_codes(envelope_id);
