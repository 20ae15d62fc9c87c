-- Version 13: cluster settings. The values set in the admin console, the API or
-- `secmail settings set`, one row a key (section.key), the value as TOML; and a counter
-- raised with every change, which each running node polls to apply changes within seconds.
-- Keys in a node's own file win over these there (see secmail/config/cluster.py).
-- compat-floor: 7

CREATE TABLE settings (
    key TEXT PRIMARY KEY,               -- section.key, as in the TOML file
    value TEXT NOT NULL,                -- a TOML value, e.g. "Secure mail" or 5 or ["en", "fi"]
    changed_at {bigint} NOT NULL,       -- unix seconds
    changed_by TEXT NOT NULL            -- the admin's name, or the system user for a command
);

CREATE TABLE settings_version (
    id INTEGER PRIMARY KEY,             -- always 1: one row
    version {bigint} NOT NULL           -- raised by every change of the settings table
);
INSERT INTO settings_version (id, version) VALUES (1, 0);
