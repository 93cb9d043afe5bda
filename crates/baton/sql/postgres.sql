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

-- Presence records: a second table, named after the lease table with _candidates appended
-- (for a lease table name of 53 characters or more, which would make it longer than 63: the
-- lease table's first 43 characters, _, 8 hex digits of the 32-bit FNV-1a hash of its whole
-- name, _candidates; the store's candidates_table() gives it). One row per candidate that
-- announces itself at a key, renewed every renew interval, alive until expires_at by the
-- server's clock; `baton handoff --to` checks it, and priorities are compared through it.
--
-- Baton creates it beside the lease table when it may. Presence is optional: where the table
-- is missing and Baton may not create it (the URL says create=false, or the role lacks CREATE
-- on the schema), presence is off and elections work as before, but Baton cannot tell live
-- candidates (`baton handoff --to` accepts any name) and priorities do nothing. To turn it on
-- there, run this and grant the role (DELETE too: Baton drops records that ran out, and a
-- stopping candidate removes its own):
--
--     GRANT SELECT, INSERT, UPDATE, DELETE ON baton_leases_candidates TO baton_app;
--
-- A table of that name with other columns, or rows with a priority outside 0..4294967295, are
-- foreign data: Baton reports them and never writes to them.

CREATE TABLE IF NOT EXISTS baton_leases_candidates (
    key        text NOT NULL,          -- the election key
    candidate  text NOT NULL,          -- the candidate's id
    priority   bigint NOT NULL,        -- its priority (0 to 4294967295)
    expires_at timestamptz NOT NULL,   -- end of the record (server clock)
    PRIMARY KEY (key, candidate)
);

-- Who leads, and for how much longer:
--     SELECT key, holder, token, expires_at - clock_timestamp() AS remaining
--     FROM baton_leases WHERE expires_at > clock_timestamp();
-- Who is running:
--     SELECT key, candidate, priority FROM baton_leases_candidates
--     WHERE expires_at > clock_timestamp() ORDER BY key, priority DESC;
