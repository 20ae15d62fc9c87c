-- Version 10: daily statistics, so the admin overview, `secmail stats` and the statistics
-- mail are cheap and survive restarts. Each node adds its counts every few seconds; a day is
-- the UTC date. Kept like the audit trail ([secure] audit_days).
-- compat-floor: 7

CREATE TABLE stats_daily (
    day TEXT NOT NULL,                  -- YYYY-MM-DD (UTC)
    name TEXT NOT NULL,                 -- smtp_messages, deliveries, portal_opens, ...
    label TEXT NOT NULL,                -- the kind or result ("" when the count has none)
    value {bigint} NOT NULL,
    PRIMARY KEY (day, name, label)
);
