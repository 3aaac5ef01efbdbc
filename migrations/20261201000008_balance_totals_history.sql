-- Totals over time (issue 10, item 1): per-currency totals of the tenant's listed
-- accounts as of every hour mark, kept in the same transaction as each snapshot,
-- each listing and each removal, so a year of daily totals is a few hundred index
-- lookups and never a scan of snapshots.
--
-- What a moment T holds, exactly (the endpoint, the CLI and the tests' recomputation
-- all go by this):
--   * an account counts at T when one of its listing periods holds T
--     (listed_at <= T < removed_at, or still listed);
--   * it then adds its latest balance (a snapshot with a balance; errors are skipped,
--     so a failing account keeps its last good balance) fetched at or before T, the
--     highest (fetched_at, id) — in its first listing period any such balance (every
--     one was stored after the account was listed, even if fetched a little before:
--     a late webhook, another host's clock), after a relisting only those fetched
--     since (its old balances do not come back, as in the live totals);
--   * an account without one counts as `missing` (never read, or every try failed).
-- A snapshot that arrives late (a webhook delivered hours after it was created) moves
-- the totals from its fetched_at up to the account's next balance, not from now.
--
-- The rows: one per tenant and hour mark at which something changed, holding the
-- running totals of every currency and the counts as of that instant (inclusive). The totals at any T are the latest row at or before
-- T ("carry-forward"); a day's end is an hour mark, so day buckets read the same rows.

-- When a listing or removal takes effect in history: the transaction's time. A test
-- may pin it for its own transaction with set_config('tally.clock', <time>, true), to
-- play days in seconds; nothing in tally sets it.
CREATE FUNCTION balance_history_now() RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(NULLIF(current_setting('tally.clock', true), '')::timestamptz, now())
$$;

-- The first hour mark (UTC) at or after t: the first row a change at t shows in.
CREATE FUNCTION balance_history_mark(t TIMESTAMPTZ) RETURNS TIMESTAMPTZ
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN date_trunc('hour', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' = t THEN t
                ELSE (date_trunc('hour', t AT TIME ZONE 'UTC') + interval '1 hour') AT TIME ZONE 'UTC'
           END
$$;

-- One stored balance's per-currency amounts, as tally's money code computes them
-- (lowercase currency; entries of one currency summed per kind; a currency with any
-- entry is held, even at 0). A sum beyond bigint fails rather than wraps.
CREATE FUNCTION balance_amounts(p_balance JSONB)
RETURNS TABLE (currency TEXT, available BIGINT, pending BIGINT, connect_reserved BIGINT,
               instant_available BIGINT)
LANGUAGE sql IMMUTABLE AS $$
    SELECT lower(e ->> 'currency'),
           COALESCE(sum((e ->> 'amount')::bigint) FILTER (WHERE k.kind = 'available'), 0)::bigint,
           COALESCE(sum((e ->> 'amount')::bigint) FILTER (WHERE k.kind = 'pending'), 0)::bigint,
           COALESCE(sum((e ->> 'amount')::bigint) FILTER (WHERE k.kind = 'connect_reserved'), 0)::bigint,
           COALESCE(sum((e ->> 'amount')::bigint) FILTER (WHERE k.kind = 'instant_available'), 0)::bigint
    FROM (VALUES ('available'), ('pending'), ('connect_reserved'), ('instant_available')) AS k(kind)
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(p_balance -> k.kind) = 'array' THEN p_balance -> k.kind
             ELSE '[]'::jsonb END) AS e
    GROUP BY lower(e ->> 'currency')
$$;

-- When each account was listed: from its insert (or its relisting) to its removal.
-- Kept by the triggers below; the periods bound which snapshots count and when.
CREATE TABLE stripe_account_listings (
    tenant_id     BIGINT NOT NULL,
    stripeid      TEXT NOT NULL,
    listed_at     TIMESTAMPTZ NOT NULL,
    -- NULL: still listed.
    removed_at    TIMESTAMPTZ,
    -- The earliest fetched_at that counts in this period: '-infinity' for the first
    -- listing, listed_at for a relisting.
    balances_from TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, stripeid, listed_at),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE,
    CHECK (removed_at IS NULL OR removed_at >= listed_at)
);

-- The tenant's running totals as of `at` (an hour mark), at every mark where they
-- changed: listed accounts with a balance (`accounts`) and without (`missing`), and
-- per currency {"usd": [available, pending, connect_reserved, instant_available,
-- holders], …}, holders being the accounts whose balance held the currency (a
-- currency at 0 holders is not reported). One row per bucket read.
CREATE TABLE balance_totals_history (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    at        TIMESTAMPTZ NOT NULL,
    accounts  BIGINT NOT NULL,
    missing   BIGINT NOT NULL,
    totals    JSONB NOT NULL,
    PRIMARY KEY (tenant_id, at)
);

-- Per-currency sums of two such totals objects; a currency whose five numbers all
-- come to 0 is dropped. bigint arithmetic: an overflow fails, never wraps.
CREATE FUNCTION balance_history_sum(p_totals JSONB, p_delta JSONB) RETURNS JSONB
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(jsonb_object_agg(s.currency, s.amounts), '{}'::jsonb)
    FROM (
        SELECT COALESCE(o.key, d.key) AS currency,
               jsonb_build_array(
                   COALESCE((o.value ->> 0)::bigint, 0) + COALESCE((d.value ->> 0)::bigint, 0),
                   COALESCE((o.value ->> 1)::bigint, 0) + COALESCE((d.value ->> 1)::bigint, 0),
                   COALESCE((o.value ->> 2)::bigint, 0) + COALESCE((d.value ->> 2)::bigint, 0),
                   COALESCE((o.value ->> 3)::bigint, 0) + COALESCE((d.value ->> 3)::bigint, 0),
                   COALESCE((o.value ->> 4)::bigint, 0) + COALESCE((d.value ->> 4)::bigint, 0)
               ) AS amounts
        FROM jsonb_each(p_totals) o FULL JOIN jsonb_each(p_delta) d ON o.key = d.key
    ) s
    WHERE s.amounts <> '[0, 0, 0, 0, 0]'::jsonb
$$;

-- History changes of one tenant run one at a time: a change copies the running totals
-- forward into a new hour's row, which must not miss a concurrent change to the
-- previous row. Taken after the account rows and before tenant_balance_totals, as
-- every writer already orders its locks (account, then totals).
CREATE FUNCTION balance_history_lock(p_tenant BIGINT) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1952541817, (p_tenant % 2147483647)::int)
$$;

-- Adds `p_delta` (a totals object) and counts to the tenant's history over
-- [p_from, p_until) (NULL: from then on): to every row at an hour mark in that range,
-- after giving the range's first mark, and the first mark after it, their own rows
-- carried forward.
CREATE FUNCTION balance_history_add(
    p_tenant BIGINT, p_from TIMESTAMPTZ, p_until TIMESTAMPTZ, p_delta JSONB,
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
    INSERT INTO balance_totals_history (tenant_id, at, accounts, missing, totals)
    SELECT p_tenant, m.at, COALESCE(prev.accounts, 0), COALESCE(prev.missing, 0),
           COALESCE(prev.totals, '{}'::jsonb)
    FROM unnest(ARRAY[from_at, until_at]) AS m(at)
    LEFT JOIN LATERAL (
        SELECT h.accounts, h.missing, h.totals FROM balance_totals_history h
        WHERE h.tenant_id = p_tenant AND h.at <= m.at ORDER BY h.at DESC LIMIT 1
    ) prev ON true
    WHERE m.at IS NOT NULL
    ON CONFLICT (tenant_id, at) DO NOTHING;
    UPDATE balance_totals_history
    SET accounts = accounts + p_accounts, missing = missing + p_missing,
        totals = CASE WHEN p_delta = '{}'::jsonb THEN totals
                      ELSE balance_history_sum(totals, p_delta) END
    WHERE tenant_id = p_tenant AND at >= from_at AND (until_at IS NULL OR at < until_at);
END $$;

-- One account's part of the history over [p_from, p_until) goes from `old` to `new`:
-- each is whether the account counts then and the balance it adds (NULL: missing).
CREATE FUNCTION balance_history_move(
    p_tenant BIGINT, p_from TIMESTAMPTZ, p_until TIMESTAMPTZ,
    p_old_counted BOOLEAN, p_old JSONB, p_new_counted BOOLEAN, p_new JSONB)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_delta JSONB;
    v_accounts BIGINT := (p_new_counted AND p_new IS NOT NULL)::int
                         - (p_old_counted AND p_old IS NOT NULL)::int;
    v_missing BIGINT := (p_new_counted AND p_new IS NULL)::int
                        - (p_old_counted AND p_old IS NULL)::int;
BEGIN
    SELECT COALESCE(jsonb_object_agg(d.currency, d.amounts), '{}'::jsonb) INTO v_delta
    FROM (
        SELECT COALESCE(n.currency, o.currency) AS currency,
               jsonb_build_array(
                   COALESCE(n.available, 0) - COALESCE(o.available, 0),
                   COALESCE(n.pending, 0) - COALESCE(o.pending, 0),
                   COALESCE(n.connect_reserved, 0) - COALESCE(o.connect_reserved, 0),
                   COALESCE(n.instant_available, 0) - COALESCE(o.instant_available, 0),
                   (n.currency IS NOT NULL)::int - (o.currency IS NOT NULL)::int
               ) AS amounts
        FROM (SELECT * FROM balance_amounts(p_new) WHERE p_new_counted) n
        FULL JOIN (SELECT * FROM balance_amounts(p_old) WHERE p_old_counted) o
            ON n.currency = o.currency
    ) d
    WHERE d.amounts <> '[0, 0, 0, 0, 0]'::jsonb;
    IF v_accounts <> 0 OR v_missing <> 0 OR v_delta <> '{}'::jsonb THEN
        PERFORM balance_history_add(p_tenant, p_from, p_until, v_delta, v_accounts, v_missing);
    END IF;
END $$;

-- Adds (p_sign 1) or takes away (-1) what one account holds from p_from on, counting
-- the balances fetched from p_balances_from: its balance at p_from, then each later
-- balance from its fetched_at. Normally that is one step (no balance is newer than now).
CREATE FUNCTION balance_history_account(
    p_tenant BIGINT, p_stripeid TEXT, p_balances_from TIMESTAMPTZ, p_from TIMESTAMPTZ,
    p_sign INTEGER)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    step_from TIMESTAMPTZ := p_from;
    held JSONB;
    later RECORD;
BEGIN
    SELECT s.balance INTO held FROM balance_snapshots s
    WHERE s.tenant_id = p_tenant AND s.stripeid = p_stripeid AND s.balance IS NOT NULL
      AND s.fetched_at >= p_balances_from AND s.fetched_at <= p_from
    ORDER BY s.fetched_at DESC, s.id DESC LIMIT 1;
    FOR later IN
        SELECT s.fetched_at, s.balance FROM balance_snapshots s
        WHERE s.tenant_id = p_tenant AND s.stripeid = p_stripeid AND s.balance IS NOT NULL
          AND s.fetched_at > p_from
        ORDER BY s.fetched_at, s.id
    LOOP
        PERFORM balance_history_move(p_tenant, step_from, later.fetched_at,
                                     p_sign < 0, held, p_sign > 0, held);
        step_from := later.fetched_at;
        held := later.balance;
    END LOOP;
    PERFORM balance_history_move(p_tenant, step_from, NULL, p_sign < 0, held, p_sign > 0, held);
END $$;

-- A balance moves its account's part from its fetched_at (or the listing, if fetched
-- before it) up to the account's next balance or the end of the listing period:
-- normally from now on; for a late one, only the hours it was the latest. BEFORE the
-- row is stored, so each row of a many-row INSERT is judged against the rows stored
-- before it, one at a time.
CREATE FUNCTION balance_history_on_snapshot() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    period RECORD;
    prev JSONB;
    next_at TIMESTAMPTZ;
BEGIN
    SELECT l.listed_at, l.removed_at, l.balances_from INTO period
    FROM stripe_account_listings l
    WHERE l.tenant_id = NEW.tenant_id AND l.stripeid = NEW.stripeid
      AND l.balances_from <= NEW.fetched_at
      AND (l.removed_at IS NULL OR NEW.fetched_at < l.removed_at)
    ORDER BY l.listed_at DESC LIMIT 1;
    IF NOT FOUND THEN
        -- Fetched while the account was not listed: it never counts.
        RETURN NEW;
    END IF;
    SELECT s.balance INTO prev FROM balance_snapshots s
    WHERE s.tenant_id = NEW.tenant_id AND s.stripeid = NEW.stripeid AND s.balance IS NOT NULL
      AND s.fetched_at >= period.balances_from AND s.fetched_at <= NEW.fetched_at
    ORDER BY s.fetched_at DESC, s.id DESC LIMIT 1;
    -- A stored balance of the same instant with a higher id (rows written with their
    -- own ids) stays the one that counts.
    SELECT min(s.fetched_at) INTO next_at FROM balance_snapshots s
    WHERE s.tenant_id = NEW.tenant_id AND s.stripeid = NEW.stripeid AND s.balance IS NOT NULL
      AND s.fetched_at >= NEW.fetched_at
      AND (s.fetched_at > NEW.fetched_at OR s.id > NEW.id);
    PERFORM balance_history_move(NEW.tenant_id, GREATEST(NEW.fetched_at, period.listed_at),
                                 LEAST(next_at, period.removed_at), true, prev, true, NEW.balance);
    RETURN NEW;
END $$;
CREATE TRIGGER balance_snapshots_history BEFORE INSERT ON balance_snapshots
    FOR EACH ROW WHEN (NEW.balance IS NOT NULL)
    EXECUTE FUNCTION balance_history_on_snapshot();

-- A new listed account starts a listing period and counts as missing until read.
CREATE FUNCTION balance_history_on_account_insert() RETURNS trigger
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
        PERFORM balance_history_add(tenant.tenant_id, at_now, NULL, '{}', 0, tenant.n);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER stripe_accounts_history_insert AFTER INSERT ON stripe_accounts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION balance_history_on_account_insert();

-- A removal ends the account's listing period and takes what it held out from then
-- on; listing it again starts a new period in which it is missing until read again
-- (as the live totals treat it).
CREATE FUNCTION balance_history_on_account_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    at_now TIMESTAMPTZ := balance_history_now();
    changed RECORD;
    period RECORD;
BEGIN
    FOR changed IN
        SELECT n.tenant_id, n.stripeid, n.removed_at IS NULL AS listed
        FROM old_rows o JOIN new_rows n ON n.tenant_id = o.tenant_id AND n.stripeid = o.stripeid
        WHERE (o.removed_at IS NULL) <> (n.removed_at IS NULL)
        ORDER BY n.tenant_id, n.stripeid
    LOOP
        IF changed.listed THEN
            INSERT INTO stripe_account_listings AS l (tenant_id, stripeid, listed_at, balances_from)
            VALUES (changed.tenant_id, changed.stripeid, at_now, at_now)
            ON CONFLICT (tenant_id, stripeid, listed_at) DO UPDATE SET removed_at = NULL;
            PERFORM balance_history_account(changed.tenant_id, changed.stripeid, at_now, at_now, 1);
        ELSE
            UPDATE stripe_account_listings SET removed_at = GREATEST(at_now, listed_at)
            WHERE tenant_id = changed.tenant_id AND stripeid = changed.stripeid AND removed_at IS NULL
            RETURNING listed_at, balances_from INTO period;
            IF FOUND THEN
                PERFORM balance_history_account(changed.tenant_id, changed.stripeid,
                                                period.balances_from,
                                                GREATEST(at_now, period.listed_at), -1);
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER stripe_accounts_history_update AFTER UPDATE ON stripe_accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION balance_history_on_account_update();

-- Recomputes one tenant's history from its listing periods and stored snapshots (the
-- definition above, set-based): each period is missing until its first balance
-- counts, then holds each balance until the next or the period's end. Used to fill
-- the history of existing deployments below, and by the tests to check the rows kept
-- incrementally.
CREATE FUNCTION balance_history_rebuild(p_tenant BIGINT) RETURNS void
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

    INSERT INTO balance_totals_history (tenant_id, at, accounts, missing, totals)
    WITH amounts AS (
        SELECT st.from_at, st.until_at, a.* FROM balance_history_steps st
        CROSS JOIN LATERAL balance_amounts(st.balance) a
    ), deltas AS (
        SELECT d.at, d.currency, sum(d.available) AS available, sum(d.pending) AS pending,
               sum(d.connect_reserved) AS connect_reserved,
               sum(d.instant_available) AS instant_available, sum(d.holders) AS holders
        FROM (
            SELECT from_at AS at, currency, available, pending, connect_reserved,
                   instant_available, 1 AS holders
            FROM amounts
            UNION ALL
            SELECT until_at, currency, -available, -pending, -connect_reserved,
                   -instant_available, -1
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
                   (sum(COALESCE(d.holders, 0)) OVER w)::bigint) AS amounts
        FROM points p
        CROSS JOIN (SELECT DISTINCT currency FROM deltas) c
        LEFT JOIN deltas d ON d.at = p.at AND d.currency = c.currency
        WINDOW w AS (PARTITION BY c.currency ORDER BY p.at)
    ), per_point AS (
        SELECT at, jsonb_object_agg(currency, amounts)
                       FILTER (WHERE amounts <> '[0, 0, 0, 0, 0]'::jsonb) AS totals
        FROM running GROUP BY at
    ), counts AS (
        SELECT p.at, (sum(COALESCE(c.accounts, 0)) OVER (ORDER BY p.at))::bigint AS accounts,
               (sum(COALESCE(c.missing, 0)) OVER (ORDER BY p.at))::bigint AS missing
        FROM points p LEFT JOIN count_deltas c ON c.at = p.at
    )
    SELECT p_tenant, k.at, k.accounts, k.missing, COALESCE(pp.totals, '{}'::jsonb)
    FROM counts k LEFT JOIN per_point pp ON pp.at = k.at;
    DROP TABLE balance_history_steps;
END $$;

-- Existing deployments: one listing period per stored account, from the earliest of
-- its first snapshot and its last change (when it was first listed is not recorded)
-- to its removal; then the history from every stored snapshot.
INSERT INTO stripe_account_listings (tenant_id, stripeid, listed_at, removed_at, balances_from)
SELECT a.tenant_id, a.stripeid,
       LEAST(a.updated_at, COALESCE(a.removed_at, 'infinity'),
             (SELECT min(s.fetched_at) FROM balance_snapshots s
              WHERE s.tenant_id = a.tenant_id AND s.stripeid = a.stripeid)),
       a.removed_at, '-infinity'
FROM stripe_accounts a;

SELECT balance_history_rebuild(id) FROM tenants;
