-- The background refresher (DESIGN §5): processes that do the work, leases on the
-- accounts they fetch, refresh demands that polls join, and one Stripe budget per
-- credential shared by every process.

-- Every process that fetches from Stripe (each `tally serve`, a `tally balances` run)
-- while it is alive. Others read the heartbeat to tell whether anyone is left to
-- finish a refresh.
CREATE TABLE workers (
    id           UUID PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('serve', 'cli')),
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- An account claimed for one balance fetch by one worker. Claimed with
-- INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now(), so two workers never
-- hold the same account at once; released in the transaction that stores the
-- snapshot; a dead worker's leases simply expire.
CREATE TABLE refresh_leases (
    tenant_id  BIGINT NOT NULL,
    stripeid   TEXT NOT NULL,
    worker_id  UUID NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, stripeid),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE
);
CREATE INDEX refresh_leases_worker ON refresh_leases (worker_id);

-- A demand: every listed account of a scope (the tenant, one owner, one account) is
-- to be tried at or after `cutoff`. Polls on any replica join the running one.
CREATE TABLE balance_refreshes (
    id             UUID PRIMARY KEY,
    tenant_id      BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- '' (the whole tenant), 'owner:<accountid>' or 'account:<stripeid>'.
    scope_key      TEXT NOT NULL,
    scope_owner    TEXT,
    scope_stripeid TEXT,
    cutoff         TIMESTAMPTZ NOT NULL,
    trigger        TEXT NOT NULL CHECK (trigger IN ('poll', 'person', 'schedule', 'cli')),
    status         TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    -- Listed accounts of the scope when it started; done/failed are final once it ends.
    total          BIGINT NOT NULL,
    done           BIGINT NOT NULL DEFAULT 0,
    failed         BIGINT NOT NULL DEFAULT 0,
    error          TEXT,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX balance_refreshes_one_running
    ON balance_refreshes (tenant_id, scope_key) WHERE status = 'running';
CREATE INDEX balance_refreshes_newest ON balance_refreshes (tenant_id, started_at DESC, id DESC);

-- Sync runs and refreshes a stopping process gave back are `interrupted`.
ALTER TABLE sync_runs DROP CONSTRAINT sync_runs_status_check;
ALTER TABLE sync_runs ADD CONSTRAINT sync_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted'));

-- One Stripe budget per credential (tenant), shared by every process. Requests are
-- paced: each reservation takes the next slot, `spacing` after the previous one,
-- so no one-second window ever holds more than the rate. A 429 seen by anyone halves
-- the rate for all; it climbs back by itself.
CREATE TABLE stripe_budgets (
    tenant_id     BIGINT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    next_slot     TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    current_rate  INTEGER NOT NULL CHECK (current_rate > 0),
    last_change   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_decrease TIMESTAMPTZ,
    reserved      BIGINT NOT NULL DEFAULT 0,
    throttled     BIGINT NOT NULL DEFAULT 0
);

-- Reserves the next request slot of a tenant's budget. `p_horizon_ms` NULL is an
-- interactive request (always queues); otherwise background work only reserves when
-- the queue reaches at most that far ahead, so a person's request never waits behind
-- more than the horizon of background slots. Returns the slot, the database clock it
-- was decided on (callers convert to their own clock by difference), whether it was
-- granted, and the rate in force.
CREATE FUNCTION stripe_budget_reserve(p_tenant BIGINT, p_configured INTEGER, p_horizon_ms INTEGER)
RETURNS TABLE (slot_at TIMESTAMPTZ, db_now TIMESTAMPTZ, granted BOOLEAN, rate INTEGER)
LANGUAGE plpgsql AS $$
DECLARE
    b        stripe_budgets%ROWTYPE;
    now_ts   TIMESTAMPTZ;
    start_at TIMESTAMPTZ;
    -- A little over a second per `rate` slots: scheduling and network jitter cannot
    -- squeeze rate + 1 requests into Stripe's one-second window.
    window_s CONSTANT DOUBLE PRECISION := 1.05;
BEGIN
    -- A slot lost in a crash costs nothing, so this commit need not wait for the WAL
    -- flush: that wait (held under the row lock) was most of a reservation's cost.
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO stripe_budgets (tenant_id, current_rate)
    VALUES (p_tenant, GREATEST(p_configured, 1)) ON CONFLICT (tenant_id) DO NOTHING;
    SELECT * INTO b FROM stripe_budgets WHERE tenant_id = p_tenant FOR UPDATE;
    now_ts := clock_timestamp();
    IF b.current_rate > p_configured THEN
        b.current_rate := GREATEST(p_configured, 1);
    END IF;
    -- Recovery: a quarter of the configured rate back per two quiet seconds.
    WHILE b.current_rate < p_configured AND now_ts - b.last_change >= interval '2 seconds' LOOP
        b.current_rate := LEAST(p_configured, b.current_rate + GREATEST(1, p_configured / 4));
        b.last_change := b.last_change + interval '2 seconds';
    END LOOP;
    start_at := GREATEST(b.next_slot, now_ts);
    IF p_horizon_ms IS NOT NULL AND start_at > now_ts + make_interval(secs => p_horizon_ms / 1000.0) THEN
        -- Refused: nothing to write unless the rate recovered meanwhile.
        UPDATE stripe_budgets SET current_rate = b.current_rate, last_change = b.last_change
        WHERE tenant_id = p_tenant
          AND (current_rate, last_change) IS DISTINCT FROM (b.current_rate, b.last_change);
        RETURN QUERY SELECT start_at, now_ts, false, b.current_rate;
        RETURN;
    END IF;
    UPDATE stripe_budgets
    SET next_slot = start_at + make_interval(secs => window_s / b.current_rate),
        current_rate = b.current_rate, last_change = b.last_change,
        reserved = stripe_budgets.reserved + 1
    WHERE tenant_id = p_tenant;
    RETURN QUERY SELECT start_at, now_ts, true, b.current_rate;
END $$;

-- Stripe answered 429: halve the tenant's rate (not below 1), at most once per
-- window, since the 429s of one burst arrive together; every 429 restarts the quiet
-- period recovery counts from.
CREATE FUNCTION stripe_budget_throttled(p_tenant BIGINT, p_configured INTEGER)
RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    now_ts TIMESTAMPTZ := clock_timestamp();
    result INTEGER;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO stripe_budgets (tenant_id, current_rate)
    VALUES (p_tenant, GREATEST(p_configured, 1)) ON CONFLICT (tenant_id) DO NOTHING;
    UPDATE stripe_budgets
    SET current_rate = CASE
            WHEN last_decrease IS NOT NULL AND now_ts - last_decrease < interval '1050 milliseconds'
            THEN current_rate ELSE GREATEST(1, current_rate / 2) END,
        last_decrease = CASE
            WHEN last_decrease IS NOT NULL AND now_ts - last_decrease < interval '1050 milliseconds'
            THEN last_decrease ELSE now_ts END,
        last_change = now_ts,
        throttled = stripe_budgets.throttled + 1
    WHERE tenant_id = p_tenant
    RETURNING current_rate INTO result;
    RETURN result;
END $$;
