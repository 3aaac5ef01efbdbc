-- How many latest balances of each tenant were fetched in each minute, ok and failed,
-- kept by triggers on latest_balances (every path that writes it: a fetch, a webhook,
-- a removal, retention, a cascade). The stale count (accounts not fetched since a
-- cutoff) sums the whole minutes before the cutoff and counts rows only inside the
-- cutoff's own minute, so a poll costs the same with 10 stale accounts as with
-- 1,000,000 (a refresher that is behind, a tenant in `events` mode whose accounts are
-- swept once a day). Rows exist only for minutes that hold a latest balance: a few
-- hundred per tenant, however many accounts.
CREATE TABLE latest_balance_minutes (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    minute    TIMESTAMPTZ NOT NULL,
    ok        BIGINT NOT NULL,
    failed    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, minute)
);

-- Adds the rows of `added` and takes away those of `removed`, per (tenant, minute), in
-- key order (two writers never lock the same rows in opposite orders), and forgets the
-- minutes left empty.
CREATE FUNCTION latest_balance_minutes_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO latest_balance_minutes AS m (tenant_id, minute, ok, failed)
        SELECT tenant_id, date_bin('1 minute', fetched_at, TIMESTAMPTZ 'epoch'),
               count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok)
        FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, minute)
        DO UPDATE SET ok = m.ok + EXCLUDED.ok, failed = m.failed + EXCLUDED.failed;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO latest_balance_minutes AS m (tenant_id, minute, ok, failed)
        SELECT tenant_id, minute, sum(ok), sum(failed) FROM (
            SELECT tenant_id, date_bin('1 minute', fetched_at, TIMESTAMPTZ 'epoch') AS minute,
                   CASE WHEN ok THEN 1 ELSE 0 END AS ok, CASE WHEN ok THEN 0 ELSE 1 END AS failed
            FROM new_rows
            UNION ALL
            SELECT tenant_id, date_bin('1 minute', fetched_at, TIMESTAMPTZ 'epoch'),
                   CASE WHEN ok THEN -1 ELSE 0 END, CASE WHEN ok THEN 0 ELSE -1 END
            FROM old_rows
        ) AS delta
        GROUP BY 1, 2 HAVING sum(ok) <> 0 OR sum(failed) <> 0 ORDER BY 1, 2
        ON CONFLICT (tenant_id, minute)
        DO UPDATE SET ok = m.ok + EXCLUDED.ok, failed = m.failed + EXCLUDED.failed;
    ELSE
        UPDATE latest_balance_minutes AS m SET ok = m.ok - d.ok, failed = m.failed - d.failed
        FROM (SELECT tenant_id, date_bin('1 minute', fetched_at, TIMESTAMPTZ 'epoch') AS minute,
                     count(*) FILTER (WHERE ok) AS ok, count(*) FILTER (WHERE NOT ok) AS failed
              FROM old_rows GROUP BY 1, 2) AS d
        WHERE m.tenant_id = d.tenant_id AND m.minute = d.minute;
    END IF;
    DELETE FROM latest_balance_minutes AS m
    USING (SELECT DISTINCT tenant_id, date_bin('1 minute', fetched_at, TIMESTAMPTZ 'epoch') AS minute
           FROM old_rows) AS o
    WHERE m.tenant_id = o.tenant_id AND m.minute = o.minute AND m.ok = 0 AND m.failed = 0;
    RETURN NULL;
END $$;

CREATE TRIGGER latest_balances_minutes_insert AFTER INSERT ON latest_balances
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION latest_balance_minutes_apply();
CREATE TRIGGER latest_balances_minutes_update AFTER UPDATE ON latest_balances
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION latest_balance_minutes_apply();
CREATE TRIGGER latest_balances_minutes_delete AFTER DELETE ON latest_balances
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION latest_balance_minutes_apply();

INSERT INTO latest_balance_minutes (tenant_id, minute, ok, failed)
SELECT tenant_id, date_bin('1 minute', fetched_at, TIMESTAMPTZ 'epoch'),
       count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok)
FROM latest_balances GROUP BY 1, 2;
