-- Version 11: which statistics mails were sent, so that of two nodes only one sends each
-- week's or month's summary (the row and the queued mail are written in one transaction).
-- compat-floor: 7

CREATE TABLE stats_mail (
    period TEXT PRIMARY KEY,            -- week:2026-11-30 or month:2026-11 (its first day)
    sent {bigint} NOT NULL              -- unix seconds
);
