-- Retention (issue 16, item 3): every table that grows with time is pruned by the
-- server in small batches (`src/retention.rs`, SQL in `src/store/retention.rs`). What
-- may go is decided here, once, for the pruner and for `tally doctor`'s count of what
-- a pass would free.

-- How far each pruning pass over snapshots has looked (the next pass starts a little
-- before it). Rows, not session state: any replica may run the next pass.
CREATE TABLE retention_marks (
    name    TEXT PRIMARY KEY,
    through TIMESTAMPTZ NOT NULL
);

-- The indexes pruning needs. Built here inside the migration's transaction, which holds
-- writes to each table while its index builds; on a large existing database create them
-- beforehand with CREATE INDEX CONCURRENTLY under the same names (README, Retention), and
-- IF NOT EXISTS makes this a no-op.
-- Snapshots in time order, for the passes that look at what passed a horizon.
CREATE INDEX IF NOT EXISTS balance_snapshots_by_fetched ON balance_snapshots (fetched_at, id);
-- Deleting a snapshot looks up the latest row that points to it (ON DELETE CASCADE /
-- SET NULL); without these each deleted snapshot reads every latest_balances row.
CREATE INDEX IF NOT EXISTS latest_balances_snapshot ON latest_balances (snapshot_id);
CREATE INDEX IF NOT EXISTS latest_balances_good_snapshot ON latest_balances (good_snapshot_id)
    WHERE good_snapshot_id IS NOT NULL;
-- The age-pruned tables, oldest first.
CREATE INDEX IF NOT EXISTS webhook_events_by_received ON webhook_events (received_at);
CREATE INDEX IF NOT EXISTS audit_events_by_at ON audit_events (at);
CREATE INDEX IF NOT EXISTS balance_refreshes_by_started ON balance_refreshes (started_at);
CREATE INDEX IF NOT EXISTS sync_runs_by_started ON sync_runs (started_at);

-- Per tenant with a ledger, the first day the closer may still compute or reopen
-- (`close::compute`: the day before Stripe's clock, as the listed accounts' reads last
-- saw it, minus `p_ledger_days`), less one day of margin. NULL p_ledger_days: none.
CREATE FUNCTION retention_open_days(p_ledger_days INTEGER)
RETURNS TABLE (tenant_id BIGINT, zone TEXT, first_open DATE)
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.close_timezone,
           CASE WHEN p_ledger_days IS NULL THEN NULL
                ELSE (c.clock AT TIME ZONE t.close_timezone)::date - 2 - p_ledger_days END
    FROM (SELECT r.tenant_id, max(r.complete_to) AS clock
          FROM ledger_reads r JOIN stripe_accounts a USING (tenant_id, stripeid)
          WHERE a.removed_at IS NULL
          GROUP BY r.tenant_id) c
    JOIN tenants t ON t.id = c.tenant_id
$$;

-- Snapshots fetched within [p_scan_from, p_scan_until) (NULL p_scan_from: from the
-- first) that may go, oldest first, with their size (NULL p_limit: all). Never one of these:
--   * one `latest_balances` points to (the latest try, the last good balance);
--   * the account's latest snapshot before `p_full_before` (a balance: its latest
--     balance), so a balance stored later, and the totals over time, still find what
--     it replaced; every snapshot from `p_full_before` on;
--   * the last balance of each of the account's UTC days (fetched after one midnight,
--     at or before the next: what the day bucket ending there reads) from
--     `p_daily_before` on (NULL: forever): history at daily resolution;
--   * a close checkpoint of a day the closer may still compute: per account and day,
--     the first balance Stripe answered from one second before the day's start that
--     no transaction shares its second with (`store::ledger::first_checkpoints`).
--     NULL p_ledger_days: of every day.
CREATE FUNCTION retention_snapshots_prunable(
    p_full_before TIMESTAMPTZ, p_daily_before TIMESTAMPTZ, p_ledger_days INTEGER,
    p_scan_from TIMESTAMPTZ, p_scan_until TIMESTAMPTZ, p_limit BIGINT)
RETURNS TABLE (id BIGINT, bytes BIGINT)
LANGUAGE sql STABLE AS $$
    -- Materialized: computed once per batch, not once per snapshot looked at.
    WITH open_days AS MATERIALIZED (SELECT * FROM retention_open_days(p_ledger_days))
    SELECT s.id, pg_column_size(s.*)::bigint
    FROM balance_snapshots s
    LEFT JOIN open_days o ON o.tenant_id = s.tenant_id
    WHERE s.fetched_at >= COALESCE(p_scan_from, '-infinity')
      AND s.fetched_at < LEAST(p_scan_until, p_full_before)
      AND NOT EXISTS (SELECT 1 FROM latest_balances l
                      WHERE l.tenant_id = s.tenant_id AND l.stripeid = s.stripeid
                        AND (l.snapshot_id = s.id OR l.good_snapshot_id = s.id))
      -- Superseded before the horizon: a balance by a later balance, an error by anything.
      AND EXISTS (SELECT 1 FROM balance_snapshots n
                  WHERE n.tenant_id = s.tenant_id AND n.stripeid = s.stripeid
                    AND (n.balance IS NOT NULL OR s.balance IS NULL)
                    AND n.fetched_at >= s.fetched_at AND n.fetched_at < p_full_before
                    AND (n.fetched_at > s.fetched_at OR n.id > s.id))
      AND NOT (s.balance IS NOT NULL
               AND (p_daily_before IS NULL OR s.fetched_at >= p_daily_before)
               AND NOT EXISTS (
                   SELECT 1 FROM balance_snapshots n
                   WHERE n.tenant_id = s.tenant_id AND n.stripeid = s.stripeid
                     AND n.balance IS NOT NULL
                     AND n.fetched_at >= s.fetched_at
                     AND (n.fetched_at > s.fetched_at OR n.id > s.id)
                     AND n.fetched_at <= (date_trunc('day', (s.fetched_at - interval '1 microsecond')
                                                            AT TIME ZONE 'UTC')
                                          + interval '1 day') AT TIME ZONE 'UTC'))
      AND NOT (s.balance IS NOT NULL AND s.stripe_at IS NOT NULL AND o.tenant_id IS NOT NULL
               AND (o.first_open IS NULL
                    OR ((s.stripe_at + interval '1 second') AT TIME ZONE o.zone)::date >= o.first_open)
               AND NOT EXISTS (SELECT 1 FROM balance_transactions x
                               WHERE x.tenant_id = s.tenant_id AND x.stripeid = s.stripeid
                                 AND x.created = s.stripe_at)
               AND NOT EXISTS (
                   SELECT 1 FROM balance_snapshots e
                   WHERE e.tenant_id = s.tenant_id AND e.stripeid = s.stripeid
                     AND e.stripe_at IS NOT NULL AND e.balance IS NOT NULL
                     AND e.stripe_at < s.stripe_at
                     AND e.stripe_at >= (date_trunc('day', (s.stripe_at + interval '1 second')
                                                           AT TIME ZONE o.zone)
                                         AT TIME ZONE o.zone) - interval '1 second'
                     AND NOT EXISTS (SELECT 1 FROM balance_transactions x
                                     WHERE x.tenant_id = e.tenant_id AND x.stripeid = e.stripeid
                                       AND x.created = e.stripe_at)))
    ORDER BY s.fetched_at, s.id
    LIMIT p_limit
$$;

-- Balance transactions no day the closer may still compute needs: created and (if
-- later) available before the first open day, and before the end of the last closed
-- day with no unclosed day before it. Tenants with no closed day keep everything.
CREATE FUNCTION retention_transactions_prunable(p_ledger_days INTEGER, p_limit BIGINT)
RETURNS TABLE (tenant_id BIGINT, id TEXT, bytes BIGINT)
LANGUAGE sql STABLE AS $$
    WITH cutoffs AS (
        SELECT o.tenant_id,
               LEAST(o.first_open::timestamp AT TIME ZONE o.zone,
                     (SELECT max(d.ends_at) FROM day_closes d
                      WHERE d.tenant_id = o.tenant_id AND d.closed_at IS NOT NULL),
                     (SELECT min(d.starts_at) FROM day_closes d
                      WHERE d.tenant_id = o.tenant_id AND d.closed_at IS NULL)) AS cutoff
        FROM retention_open_days(p_ledger_days) o
        WHERE o.first_open IS NOT NULL
          AND EXISTS (SELECT 1 FROM day_closes d
                      WHERE d.tenant_id = o.tenant_id AND d.closed_at IS NOT NULL)
    )
    SELECT b.tenant_id, b.id, b.bytes
    FROM cutoffs c
    CROSS JOIN LATERAL (
        SELECT x.tenant_id, x.id, pg_column_size(x.*)::bigint AS bytes
        FROM balance_transactions x
        WHERE x.tenant_id = c.tenant_id AND x.created < c.cutoff
          AND GREATEST(x.created, x.available_on) < c.cutoff
        ORDER BY x.created
        LIMIT p_limit) b
    LIMIT p_limit
$$;

-- Per tenant with a ledger, the first day whose closes are kept: `p_closes_days`
-- before the day Stripe's clock is on.
CREATE FUNCTION retention_closes_from(p_closes_days INTEGER)
RETURNS TABLE (tenant_id BIGINT, keep_from DATE)
LANGUAGE sql STABLE AS $$
    SELECT o.tenant_id, o.first_open + 2 - p_closes_days FROM retention_open_days(0) o
$$;
