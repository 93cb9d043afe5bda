-- Baton's lease table for MySQL 8 and MariaDB 10.5+ (the `mysql` store).
--
-- Baton creates this table itself on first use when its user may (CREATE on the database).
-- Where it may not, a DBA runs this file once in the database the store's URL names, and
-- grants the user Baton connects as:
--
--     GRANT SELECT, INSERT, UPDATE ON mydb.baton_leases TO 'baton_app'@'%';
--
-- For another table name (the URL's ?table=NAME), replace baton_leases below. Baton checks
-- the columns, their types (DATETIME(6): leases can be sub-second), the binary collation
-- (keys are compared exactly: "Jobs" and "jobs" are different elections) and the primary
-- key; it never drops a table or changes a column.
--
-- One row per election key. A release clears holder and expires_at and keeps the row, so the
-- fencing token keeps increasing. Times are UTC from the server's clock (UTC_TIMESTAMP(6)).
--
-- The handoff_ columns hold a planned handoff: after `baton handoff` (or
-- LeaderElection::hand_over) the freed row carries a mark, and until handoff_until only
-- handoff_to may take the key ('' in handoff_to: anyone but handoff_from); a request from
-- another process is handoff_to and handoff_from (the holder) beside a held lease, with
-- handoff_until NULL.

CREATE TABLE IF NOT EXISTS baton_leases (
    `key`       VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    holder      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, -- NULL when free
    token       BIGINT NOT NULL,       -- the last fencing token minted (0: never acquired)
    expires_at  DATETIME(6) NULL,      -- end of the lease, UTC; NULL when free
    acquired_at DATETIME(6) NULL,      -- last acquisition, UTC, for humans
    renewed_at  DATETIME(6) NULL,      -- last renewal, UTC, for humans
    -- planned handoff: the candidate ('' for anyone), the leader that handed over (or is
    -- asked to), and the end of the mark (UTC; NULL for a request)
    handoff_to    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    handoff_from  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    handoff_until DATETIME(6) NULL
) ENGINE=InnoDB;

-- A table made by a Baton from before planned handoffs (six columns) gets the three handoff_
-- columns when a store opens it. If Baton's user may not alter the table, a DBA runs this
-- once instead (no row is rewritten):
--
--     ALTER TABLE baton_leases
--         ADD COLUMN handoff_to VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
--         ADD COLUMN handoff_from VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
--         ADD COLUMN handoff_until DATETIME(6) NULL;

-- Presence records: a second table, named after the lease table with _candidates appended
-- (for a lease table name of 53 characters or more, which would make it longer than 63: the
-- lease table's first 43 characters, _, 8 hex digits of the 32-bit FNV-1a hash of its whole
-- name, _candidates; the store's candidates_table() gives it). One row per candidate that
-- announces itself at a key, renewed every renew interval, alive until expires_at (UTC, the
-- server's clock); `baton handoff --to` checks it, and priorities are compared through it.
--
-- Baton creates it beside the lease table when it may. Presence is optional: where the table
-- is missing and Baton may not create it (the URL says create=false, or the user lacks
-- CREATE), presence is off and elections work as before, but Baton cannot tell live
-- candidates (`baton handoff --to` accepts any name) and priorities do nothing. To turn it on
-- there, run this and grant the user (DELETE too: Baton drops records that ran out, and a
-- stopping candidate removes its own):
--
--     GRANT SELECT, INSERT, UPDATE, DELETE ON mydb.baton_leases_candidates TO 'baton_app'@'%';
--
-- A table of that name with other columns, or rows with a priority outside 0..4294967295, are
-- foreign data: Baton reports them and never writes to them.

CREATE TABLE IF NOT EXISTS baton_leases_candidates (
    `key`      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    candidate  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    priority   BIGINT NOT NULL,        -- 0 to 4294967295
    expires_at DATETIME(6) NOT NULL,   -- end of the record, UTC
    PRIMARY KEY (`key`, candidate)
) ENGINE=InnoDB;

-- Who leads, and for how much longer:
--     SELECT `key`, holder, token, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) / 1e6 AS remaining_s
--     FROM baton_leases WHERE expires_at > UTC_TIMESTAMP(6);
-- Who is running:
--     SELECT `key`, candidate, priority FROM baton_leases_candidates
--     WHERE expires_at > UTC_TIMESTAMP(6) ORDER BY `key`, priority DESC;
