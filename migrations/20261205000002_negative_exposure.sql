-- The platform's negative-balance exposure (issue 17, item 5): per tenant and currency,
-- what the listed accounts whose available balance is below zero owe (the sum of those
-- available balances, as a positive amount: `negative`) and how many they are
-- (`negative_accounts`). An account's available balance in a currency is its entries
-- of that currency summed, as its amounts are; `available` stays the net total. A
-- negation or a sum beyond bigint fails rather than wraps.

-- Kept beside the totals, in the same transaction as each snapshot and removal
-- (store::snapshots), so the aggregate still scans no account; `tally doctor`
-- recomputes them with the rest.
ALTER TABLE tenant_balance_totals
    ADD COLUMN negative          BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN negative_accounts BIGINT NOT NULL DEFAULT 0;

UPDATE tenant_balance_totals t
SET negative = r.negative, negative_accounts = r.accounts
FROM (
    SELECT a.tenant_id, e.currency, sum(-e.available)::bigint AS negative, count(*) AS accounts
    FROM stripe_accounts a
    JOIN latest_balances l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
    CROSS JOIN LATERAL jsonb_to_recordset(l.amounts) AS e(currency text, available bigint)
    WHERE a.removed_at IS NULL AND e.available < 0
    GROUP BY a.tenant_id, e.currency
) r
WHERE t.tenant_id = r.tenant_id AND t.currency = r.currency;

-- The accounts below zero (the admin page lists them): read through this partial
-- index, they cost what they are, not the tenant.
CREATE INDEX latest_balances_below_zero ON latest_balances (tenant_id)
    WHERE jsonb_path_exists(amounts, '$[*] ? (@.available < 0)');

-- Totals over time carry the exposure too: per currency {"usd": [negative, accounts], …}
-- (a currency in which no account is below zero is absent). NULL: the row was written
-- before tally kept the exposure; it stays NULL, and its buckets report the exposure
-- as unknown (null), not as 0.
ALTER TABLE balance_totals_history ADD COLUMN exposure JSONB;

-- Per-currency sums of an exposure object and a delta; a currency at [0, 0] is
-- dropped; NULL (not kept then) stays NULL.
CREATE FUNCTION balance_history_exposure_sum(p_exposure JSONB, p_delta JSONB) RETURNS JSONB
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_exposure IS NULL THEN NULL ELSE (
        SELECT COALESCE(jsonb_object_agg(s.currency, s.exposure), '{}'::jsonb)
        FROM (
            SELECT COALESCE(o.key, d.key) AS currency,
                   jsonb_build_array(
                       COALESCE((o.value ->> 0)::bigint, 0) + COALESCE((d.value ->> 0)::bigint, 0),
                       COALESCE((o.value ->> 1)::bigint, 0) + COALESCE((d.value ->> 1)::bigint, 0)
                   ) AS exposure
            FROM jsonb_each(p_exposure) o FULL JOIN jsonb_each(p_delta) d ON o.key = d.key
        ) s
        WHERE s.exposure <> '[0, 0]'::jsonb)
    END
$$;

-- As before, with the exposure's delta beside the totals' (`p_exposure`). A new row
-- carries the previous row's exposure forward (NULL if that one predates it); a
-- tenant's first row starts from none.
DROP FUNCTION balance_history_add(BIGINT, TIMESTAMPTZ, TIMESTAMPTZ, JSONB, BIGINT, BIGINT);
CREATE FUNCTION balance_history_add(
    p_tenant BIGINT, p_from TIMESTAMPTZ, p_until TIMESTAMPTZ, p_delta JSONB, p_exposure JSONB,
    p_accounts BIGINT, p_missing BIGINT)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    from_at  TIMESTAMPTZ := balance_history_mark(p_from);
    until_at TIMESTAMPTZ := balance_history_mark(p_until);
BEGIN
    IF until_at IS NOT NULL AND until_at <= from_at THEN
        RETURN;
    END IF;
    PERFORM balance_history_lock(p_tenant);
    INSERT INTO balance_totals_history (tenant_id, at, accounts, missing, totals, exposure)
    SELECT p_tenant, m.at, COALESCE(prev.accounts, 0), COALESCE(prev.missing, 0),
           COALESCE(prev.totals, '{}'::jsonb),
           CASE WHEN prev.at IS NULL THEN '{}'::jsonb ELSE prev.exposure END
    FROM unnest(ARRAY[from_at, until_at]) AS m(at)
    LEFT JOIN LATERAL (
        SELECT h.at, h.accounts, h.missing, h.totals, h.exposure FROM balance_totals_history h
        WHERE h.tenant_id = p_tenant AND h.at <= m.at ORDER BY h.at DESC LIMIT 1
    ) prev ON true
    WHERE m.at IS NOT NULL
    ON CONFLICT (tenant_id, at) DO NOTHING;
    UPDATE balance_totals_history
    SET accounts = accounts + p_accounts, missing = missing + p_missing,
        totals = CASE WHEN p_delta = '{}'::jsonb THEN totals
                      ELSE balance_history_sum(totals, p_delta) END,
        exposure = CASE WHEN p_exposure = '{}'::jsonb THEN exposure
                        ELSE balance_history_exposure_sum(exposure, p_exposure) END
    WHERE tenant_id = p_tenant AND at >= from_at AND (until_at IS NULL OR at < until_at);
END $$;

-- As before; the account's exposure moves with its balance: per currency, what it
-- owes below zero and whether it is below zero.
CREATE OR REPLACE FUNCTION balance_history_move(
    p_tenant BIGINT, p_from TIMESTAMPTZ, p_until TIMESTAMPTZ,
    p_old_counted BOOLEAN, p_old JSONB, p_new_counted BOOLEAN, p_new JSONB)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_delta JSONB;
    v_exposure JSONB;
    v_accounts BIGINT := (p_new_counted AND p_new IS NOT NULL)::int
                         - (p_old_counted AND p_old IS NOT NULL)::int;
    v_missing BIGINT := (p_new_counted AND p_new IS NULL)::int
                        - (p_old_counted AND p_old IS NULL)::int;
BEGIN
    SELECT COALESCE(jsonb_object_agg(d.currency, d.amounts)
                        FILTER (WHERE d.amounts <> '[0, 0, 0, 0, 0]'::jsonb), '{}'::jsonb),
           COALESCE(jsonb_object_agg(d.currency, d.exposure)
                        FILTER (WHERE d.exposure <> '[0, 0]'::jsonb), '{}'::jsonb)
    INTO v_delta, v_exposure
    FROM (
        SELECT COALESCE(n.currency, o.currency) AS currency,
               jsonb_build_array(
                   COALESCE(n.available, 0) - COALESCE(o.available, 0),
                   COALESCE(n.pending, 0) - COALESCE(o.pending, 0),
                   COALESCE(n.connect_reserved, 0) - COALESCE(o.connect_reserved, 0),
                   COALESCE(n.instant_available, 0) - COALESCE(o.instant_available, 0),
                   (n.currency IS NOT NULL)::int - (o.currency IS NOT NULL)::int
               ) AS amounts,
               jsonb_build_array(
                   GREATEST(-COALESCE(n.available, 0), 0) - GREATEST(-COALESCE(o.available, 0), 0),
                   (COALESCE(n.available, 0) < 0)::int - (COALESCE(o.available, 0) < 0)::int
               ) AS exposure
        FROM (SELECT * FROM balance_amounts(p_new) WHERE p_new_counted) n
        FULL JOIN (SELECT * FROM balance_amounts(p_old) WHERE p_old_counted) o
            ON n.currency = o.currency
    ) d;
    IF v_accounts <> 0 OR v_missing <> 0 OR v_delta <> '{}'::jsonb
       OR v_exposure <> '{}'::jsonb THEN
        PERFORM balance_history_add(p_tenant, p_from, p_until, v_delta, v_exposure,
                                    v_accounts, v_missing);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION balance_history_on_account_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    at_now TIMESTAMPTZ := balance_history_now();
    tenant RECORD;
BEGIN
    INSERT INTO stripe_account_listings (tenant_id, stripeid, listed_at, balances_from)
    SELECT tenant_id, stripeid, at_now, '-infinity' FROM new_rows WHERE removed_at IS NULL;
    FOR tenant IN
        SELECT tenant_id, count(*) AS n FROM new_rows WHERE removed_at IS NULL GROUP BY tenant_id
    LOOP
        PERFORM balance_history_add(tenant.tenant_id, at_now, NULL, '{}', '{}', 0, tenant.n);
    END LOOP;
    RETURN NULL;
END $$;

-- As before, with the exposure at every row (a full rebuild knows it everywhere).
CREATE OR REPLACE FUNCTION balance_history_rebuild(p_tenant BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM balance_history_lock(p_tenant);
    DELETE FROM balance_totals_history WHERE tenant_id = p_tenant;
    CREATE TEMPORARY TABLE balance_history_steps ON COMMIT DROP AS
    WITH good AS (
        SELECT l.stripeid, l.listed_at, l.removed_at, s.fetched_at, s.balance,
               lead(s.fetched_at) OVER (PARTITION BY l.stripeid, l.listed_at
                                        ORDER BY s.fetched_at, s.id) AS next_at
        FROM stripe_account_listings l
        JOIN balance_snapshots s
          ON s.tenant_id = l.tenant_id AND s.stripeid = l.stripeid AND s.balance IS NOT NULL
         AND s.fetched_at >= l.balances_from
         AND (l.removed_at IS NULL OR s.fetched_at < l.removed_at)
        WHERE l.tenant_id = p_tenant
    ), steps AS (
        SELECT GREATEST(fetched_at, listed_at) AS step_from, LEAST(next_at, removed_at) AS step_until,
               balance
        FROM good
        UNION ALL
        -- (GREATEST skips NULLs: an account never read is missing to the period's end.)
        SELECT l.listed_at,
               CASE WHEN f.first_at IS NULL THEN l.removed_at
                    ELSE GREATEST(f.first_at, l.listed_at) END,
               NULL
        FROM stripe_account_listings l
        LEFT JOIN (SELECT stripeid, listed_at, min(fetched_at) AS first_at FROM good
                   GROUP BY stripeid, listed_at) f
          ON f.stripeid = l.stripeid AND f.listed_at = l.listed_at
        WHERE l.tenant_id = p_tenant
    )
    SELECT balance_history_mark(step_from) AS from_at, balance_history_mark(step_until) AS until_at,
           balance
    FROM steps;
    DELETE FROM balance_history_steps WHERE until_at IS NOT NULL AND until_at <= from_at;

    INSERT INTO balance_totals_history (tenant_id, at, accounts, missing, totals, exposure)
    WITH amounts AS (
        SELECT st.from_at, st.until_at, a.*,
               GREATEST(-a.available, 0) AS negative, (a.available < 0)::int AS below
        FROM balance_history_steps st
        CROSS JOIN LATERAL balance_amounts(st.balance) a
    ), deltas AS (
        SELECT d.at, d.currency, sum(d.available) AS available, sum(d.pending) AS pending,
               sum(d.connect_reserved) AS connect_reserved,
               sum(d.instant_available) AS instant_available, sum(d.holders) AS holders,
               sum(d.negative) AS negative, sum(d.below) AS below
        FROM (
            SELECT from_at AS at, currency, available, pending, connect_reserved,
                   instant_available, 1 AS holders, negative, below
            FROM amounts
            UNION ALL
            SELECT until_at, currency, -available, -pending, -connect_reserved,
                   -instant_available, -1, -negative, -below
            FROM amounts WHERE until_at IS NOT NULL
        ) d
        GROUP BY d.at, d.currency
    ), count_deltas AS (
        SELECT d.at, sum(d.accounts) AS accounts, sum(d.missing) AS missing
        FROM (
            SELECT from_at AS at, (balance IS NOT NULL)::int AS accounts,
                   (balance IS NULL)::int AS missing
            FROM balance_history_steps
            UNION ALL
            SELECT until_at, -(balance IS NOT NULL)::int, -(balance IS NULL)::int
            FROM balance_history_steps WHERE until_at IS NOT NULL
        ) d
        GROUP BY d.at
    ), points AS (
        SELECT at FROM deltas UNION SELECT at FROM count_deltas
    ), running AS (
        SELECT p.at, c.currency,
               jsonb_build_array(
                   (sum(COALESCE(d.available, 0)) OVER w)::bigint,
                   (sum(COALESCE(d.pending, 0)) OVER w)::bigint,
                   (sum(COALESCE(d.connect_reserved, 0)) OVER w)::bigint,
                   (sum(COALESCE(d.instant_available, 0)) OVER w)::bigint,
                   (sum(COALESCE(d.holders, 0)) OVER w)::bigint) AS amounts,
               jsonb_build_array(
                   (sum(COALESCE(d.negative, 0)) OVER w)::bigint,
                   (sum(COALESCE(d.below, 0)) OVER w)::bigint) AS exposure
        FROM points p
        CROSS JOIN (SELECT DISTINCT currency FROM deltas) c
        LEFT JOIN deltas d ON d.at = p.at AND d.currency = c.currency
        WINDOW w AS (PARTITION BY c.currency ORDER BY p.at)
    ), per_point AS (
        SELECT at, jsonb_object_agg(currency, amounts)
                       FILTER (WHERE amounts <> '[0, 0, 0, 0, 0]'::jsonb) AS totals,
                   jsonb_object_agg(currency, exposure)
                       FILTER (WHERE exposure <> '[0, 0]'::jsonb) AS exposure
        FROM running GROUP BY at
    ), counts AS (
        SELECT p.at, (sum(COALESCE(c.accounts, 0)) OVER (ORDER BY p.at))::bigint AS accounts,
               (sum(COALESCE(c.missing, 0)) OVER (ORDER BY p.at))::bigint AS missing
        FROM points p LEFT JOIN count_deltas c ON c.at = p.at
    )
    SELECT p_tenant, k.at, k.accounts, k.missing, COALESCE(pp.totals, '{}'::jsonb),
           COALESCE(pp.exposure, '{}'::jsonb)
    FROM counts k LEFT JOIN per_point pp ON pp.at = k.at;
    DROP TABLE balance_history_steps;
END $$;

-- Existing deployments: rows written so far keep NULL. Each tenant with a history gets
-- a row at the first hour mark from now (its totals carried forward), and the rows from
-- that mark on get the exposure as the definition of a moment gives it (every account
-- listed then, its latest balance fetched at or before it); every later change moves
-- them as it moves the totals.
INSERT INTO balance_totals_history (tenant_id, at, accounts, missing, totals)
SELECT DISTINCT ON (h.tenant_id) h.tenant_id, balance_history_mark(now()), h.accounts,
       h.missing, h.totals
FROM balance_totals_history h
WHERE h.at <= balance_history_mark(now())
ORDER BY h.tenant_id, h.at DESC
ON CONFLICT (tenant_id, at) DO NOTHING;

UPDATE balance_totals_history h
SET exposure = (
    SELECT COALESCE(jsonb_object_agg(e.currency, jsonb_build_array(e.negative, e.accounts)),
                    '{}'::jsonb)
    FROM (
        SELECT m.currency, sum(-m.available)::bigint AS negative, count(*) AS accounts
        FROM stripe_account_listings l
        CROSS JOIN LATERAL (
            SELECT s.balance FROM balance_snapshots s
            WHERE s.tenant_id = l.tenant_id AND s.stripeid = l.stripeid
              AND s.balance IS NOT NULL AND s.fetched_at >= l.balances_from
              AND s.fetched_at <= h.at
            ORDER BY s.fetched_at DESC, s.id DESC LIMIT 1
        ) g
        CROSS JOIN LATERAL balance_amounts(g.balance) m
        WHERE l.tenant_id = h.tenant_id AND l.listed_at <= h.at
          AND (l.removed_at IS NULL OR h.at < l.removed_at) AND m.available < 0
        GROUP BY m.currency
    ) e)
WHERE h.at >= balance_history_mark(now());
