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
-- alters or drops a table.
--
-- One row per election key. A release clears holder and expires_at and keeps the row, so the
-- fencing token keeps increasing across releases. Times come from the server's clock only.

CREATE TABLE IF NOT EXISTS baton_leases (
    key         text PRIMARY KEY,   -- the election key
    holder      text,               -- the leader's candidate id; NULL when released
    token       bigint NOT NULL,    -- the last fencing token minted for the key (1, 2, ...)
    expires_at  timestamptz,        -- end of the lease (server clock); NULL when released
    acquired_at timestamptz,        -- last acquisition, for humans
    renewed_at  timestamptz         -- last renewal, for humans
);

-- Who leads, and for how much longer:
--     SELECT key, holder, token, expires_at - clock_timestamp() AS remaining
--     FROM baton_leases WHERE expires_at > clock_timestamp();
