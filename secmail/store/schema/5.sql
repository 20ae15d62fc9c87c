-- Version 5: quarantine for queue rows whose message cannot be read (sealed under another
-- master key, altered, or missing). A quarantined row is kept, with its reason in last_error,
-- but is never claimed until an admin runs `secmail queue retry ID` (or deletes it).

ALTER TABLE queue ADD COLUMN quarantined {bigint};      -- when it was set aside; NULL: in the queue
