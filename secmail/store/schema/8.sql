-- Version 8: the admins' audit trail: every sign-in, failure and change made in the admin
-- console, the admin API or an admin command, with who, when and from where. Kept like the
-- messages' events ([secure] audit_days).
-- compat-floor: 7

CREATE TABLE admin_audit (
    id {serial},
    at {bigint} NOT NULL,           -- unix seconds
    admin TEXT NOT NULL,            -- the admin's name as given (also for a failed sign-in), or the system user for a command
    address TEXT NOT NULL,          -- the client's IP address, or 'local' for a secmail command
    action TEXT NOT NULL,           -- sign-in, sign-in failed, locked, setting changed, revoked, ...
    setting TEXT,                   -- the key a change is about (section.key), or NULL
    before TEXT,                    -- the value before (secrets masked), or NULL
    after TEXT                      -- the value after (secrets masked), or NULL
);
CREATE INDEX admin_audit_at ON admin_audit(at);
