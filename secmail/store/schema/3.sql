-- Version 3: D-Compose: outsiders prove their address with an e-mail code, then write in a session.

CREATE TABLE compose_codes (
    address TEXT NOT NULL,                              -- the outsider's address, lower-cased
    code_hash TEXT NOT NULL,                            -- HMAC of the code; the code is never stored
    created {bigint} NOT NULL,
    expires {bigint} NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX compose_codes_address ON compose_codes(address, created);

CREATE TABLE compose_sessions (
    id_hash TEXT PRIMARY KEY,                           -- sha256 of the session cookie; the cookie is never stored
    address TEXT NOT NULL,                              -- the address the code proved
    created {bigint} NOT NULL,
    last_seen {bigint} NOT NULL,
    csrf TEXT NOT NULL
);
CREATE INDEX compose_sessions_seen ON compose_sessions(last_seen);
