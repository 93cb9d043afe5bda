-- Baton's lease table for PostgreSQL (the `postgres` store).
--
-- Baton creates this table itself on first use when its role may (CREATE on the schema).
-- Where it may not, a DBA runs this file once, in the database and schema the store's URL
-- reaches (through the role's search_path), and grants the role Baton connects as:
--
--     GRANT SELECT, INSERT, UPDATE ON baton_leases TO baton_app;
--
-- For another table name (the URL's ?table=NAME), replace baton_leases below. Baton checks
-- that the table has exactly these columns and types and a primary key on "key"; it never
-- drops a table or changes a column.
--
-- One row per election key. A release clears holder and expires_at and keeps the row, so the
-- fencing token keeps increasing across releases. Times come from the server's clock only.
--
-- The handoff_ columns hold a planned handoff: after `baton handoff` (or
-- LeaderElection::hand_over) the freed row carries a mark, and until handoff_until only
-- handoff_to may take the key ('' in handoff_to: anyone but handoff_from); a request from
-- another process is handoff_to and handoff_from (the holder) beside a held lease, with
-- handoff_until NULL.

CREATE TABLE IF NOT EXISTS baton_leases (
    key         text PRIMARY KEY,   -- the election key
    holder      text,               -- the leader's candidate id; NULL when released
    token       bigint NOT NULL,    -- the last fencing token minted for the key (1, 2, ...)
    expires_at  timestamptz,        -- end of the lease (server clock); NULL when released
    acquired_at timestamptz,        -- last acquisition, for humans
    renewed_at  timestamptz,        -- last renewal, for humans
    handoff_to    text,             -- planned handoff: the candidate ('' for anyone)
    handoff_from  text,             -- planned handoff: the leader that handed over / is asked
    handoff_until timestamptz       -- end of a handoff's mark (server clock); NULL for a request
);

-- A table made by a Baton from before planned handoffs (six columns) gets the three handoff_
-- columns when a store opens it. If Baton's role may not alter the table (it is not the
-- owner), the table's owner runs this once instead (no row is rewritten):
--
--     ALTER TABLE baton_leases
--         ADD COLUMN IF NOT EXISTS handoff_to text,
--         ADD COLUMN IF NOT EXISTS handoff_from text,
--         ADD COLUMN IF NOT EXISTS handoff_until timestamptz;

-- Who leads, and for how much longer:
--     SELECT key, holder, token, expires_at - clock_timestamp() AS remaining
--     FROM baton_leases WHERE expires_at > clock_timestamp();
