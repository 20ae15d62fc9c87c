-- Version 9: the nodes that run on this database, each with the last time its readiness check
-- wrote here (GET /readyz's write probe) and its version.
-- compat-floor: 7

CREATE TABLE nodes (
    name TEXT PRIMARY KEY,              -- gateway.hostname/host name, as in key_ring_nodes
    seen {bigint} NOT NULL,             -- unix seconds of its last write probe
    version TEXT NOT NULL               -- the secmail version it runs
);
