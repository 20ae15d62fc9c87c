-- Version 14: the admin console's accounts. Admins (password as an argon2id hash, the TOTP
-- secret sealed with a key derived from the master key ring, key_id naming the ring's key),
-- roles of their own making (the built-in admin, helpdesk and auditor live in the code),
-- API tokens and console sessions (only SHA-256 hashes of tokens and cookies are kept).
-- Additive: older code never reads these tables.
-- compat-floor: 7

CREATE TABLE admin_roles (
    name TEXT PRIMARY KEY,
    pages TEXT NOT NULL,                -- JSON: area -> "none" | "view" | "full"
    created {bigint} NOT NULL
);

CREATE TABLE admins (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,        -- argon2id, PHC string
    totp_secret {blob} NOT NULL,        -- nonce + AES-GCM of the base32 secret
    key_id TEXT NOT NULL,               -- the master key the secret is sealed under
    totp_last_step {bigint} NOT NULL,   -- the last 30-second step that signed in (no replay)
    failures INTEGER NOT NULL,          -- failed sign-ins since the last good one
    locked_until {bigint} NOT NULL,     -- unix seconds; 0 when not locked
    created {bigint} NOT NULL
);

CREATE TABLE admin_tokens (
    id_hash TEXT PRIMARY KEY,           -- SHA-256 of the token
    admin TEXT NOT NULL,                -- acts with this admin's role
    created {bigint} NOT NULL,
    last_used {bigint}
);
CREATE INDEX admin_tokens_admin ON admin_tokens(admin);

CREATE TABLE admin_sessions (
    id_hash TEXT PRIMARY KEY,           -- SHA-256 of the cookie
    admin TEXT NOT NULL,
    created {bigint} NOT NULL,
    last_seen {bigint} NOT NULL,
    csrf TEXT NOT NULL
);
CREATE INDEX admin_sessions_admin ON admin_sessions(admin);

-- Failed sign-ins and locks of a name are counted from the audit trail (also for names that
-- are no admin): by name, action and time.
CREATE INDEX admin_audit_admin ON admin_audit(admin, action, at);
