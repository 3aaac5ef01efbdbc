-- Stripe's two limits (issue "Follow what changes" item 4): requests per second per
-- account (the tenant's rate, `stripe_budgets`) and per endpoint (`/v1/balance`,
-- `/v1/accounts`, …; 25/s by default, `stripe.endpoint_rate_limit`). A request takes a
-- slot of both, in one statement; a 429 that says `endpoint-rate` halves only its
-- endpoint's rate, any other halves the tenant's.
-- stripe_budget_reserve (the tenant's rate alone) is no longer called by this version;
-- it stays so that replicas of the previous version keep pacing during a rolling
-- upgrade. A later migration may drop it.
CREATE TABLE stripe_endpoint_budgets (
    tenant_id     BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    endpoint      TEXT NOT NULL,
    next_slot     TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    current_rate  INTEGER NOT NULL CHECK (current_rate > 0),
    last_change   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_decrease TIMESTAMPTZ,
    reserved      BIGINT NOT NULL DEFAULT 0,
    throttled     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, endpoint)
);

-- Reserves the next slot of both the tenant's budget and the endpoint's: the request
-- starts when both allow it, and each pointer moves on by its own spacing from there,
-- so neither rate is exceeded in any one-second window. Background work refuses a
-- slot further than the horizon ahead (as stripe_budget_reserve), so a backed-up
-- endpoint holds the tenant's other endpoints back by at most the horizon.
CREATE FUNCTION stripe_budget_reserve_endpoint(p_tenant BIGINT, p_configured INTEGER,
                                               p_endpoint TEXT, p_endpoint_configured INTEGER,
                                               p_horizon_ms INTEGER)
RETURNS TABLE (slot_at TIMESTAMPTZ, db_now TIMESTAMPTZ, granted BOOLEAN, rate INTEGER)
LANGUAGE plpgsql AS $$
DECLARE
    b        stripe_budgets%ROWTYPE;
    e        stripe_endpoint_budgets%ROWTYPE;
    now_ts   TIMESTAMPTZ;
    start_at TIMESTAMPTZ;
    window_s CONSTANT DOUBLE PRECISION := 1.05;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO stripe_budgets (tenant_id, current_rate)
    VALUES (p_tenant, GREATEST(p_configured, 1)) ON CONFLICT (tenant_id) DO NOTHING;
    INSERT INTO stripe_endpoint_budgets (tenant_id, endpoint, current_rate)
    VALUES (p_tenant, p_endpoint, GREATEST(p_endpoint_configured, 1))
    ON CONFLICT (tenant_id, endpoint) DO NOTHING;
    -- Always the tenant's row first, then the endpoint's: no two reservations wait on
    -- each other in opposite orders.
    SELECT * INTO b FROM stripe_budgets WHERE tenant_id = p_tenant FOR UPDATE;
    SELECT * INTO e FROM stripe_endpoint_budgets
    WHERE tenant_id = p_tenant AND endpoint = p_endpoint FOR UPDATE;
    now_ts := clock_timestamp();
    IF b.current_rate > p_configured THEN
        b.current_rate := GREATEST(p_configured, 1);
    END IF;
    IF e.current_rate > p_endpoint_configured THEN
        e.current_rate := GREATEST(p_endpoint_configured, 1);
    END IF;
    -- Recovery, for each: a quarter of the configured rate back per two quiet seconds.
    WHILE b.current_rate < p_configured AND now_ts - b.last_change >= interval '2 seconds' LOOP
        b.current_rate := LEAST(p_configured, b.current_rate + GREATEST(1, p_configured / 4));
        b.last_change := b.last_change + interval '2 seconds';
    END LOOP;
    WHILE e.current_rate < p_endpoint_configured AND now_ts - e.last_change >= interval '2 seconds' LOOP
        e.current_rate := LEAST(p_endpoint_configured,
                                e.current_rate + GREATEST(1, p_endpoint_configured / 4));
        e.last_change := e.last_change + interval '2 seconds';
    END LOOP;
    start_at := GREATEST(b.next_slot, e.next_slot, now_ts);
    IF p_horizon_ms IS NOT NULL AND start_at > now_ts + make_interval(secs => p_horizon_ms / 1000.0) THEN
        UPDATE stripe_budgets SET current_rate = b.current_rate, last_change = b.last_change
        WHERE tenant_id = p_tenant
          AND (current_rate, last_change) IS DISTINCT FROM (b.current_rate, b.last_change);
        UPDATE stripe_endpoint_budgets SET current_rate = e.current_rate, last_change = e.last_change
        WHERE tenant_id = p_tenant AND endpoint = p_endpoint
          AND (current_rate, last_change) IS DISTINCT FROM (e.current_rate, e.last_change);
        RETURN QUERY SELECT start_at, now_ts, false, LEAST(b.current_rate, e.current_rate);
        RETURN;
    END IF;
    UPDATE stripe_budgets
    SET next_slot = start_at + make_interval(secs => window_s / b.current_rate),
        current_rate = b.current_rate, last_change = b.last_change,
        reserved = stripe_budgets.reserved + 1
    WHERE tenant_id = p_tenant;
    UPDATE stripe_endpoint_budgets
    SET next_slot = start_at + make_interval(secs => window_s / e.current_rate),
        current_rate = e.current_rate, last_change = e.last_change,
        reserved = stripe_endpoint_budgets.reserved + 1
    WHERE tenant_id = p_tenant AND endpoint = p_endpoint;
    RETURN QUERY SELECT start_at, now_ts, true, LEAST(b.current_rate, e.current_rate);
END $$;

-- Stripe answered 429 `endpoint-rate`: halve that endpoint's rate (not below 1), at
-- most once per window, as stripe_budget_throttled does for the tenant's.
CREATE FUNCTION stripe_budget_endpoint_throttled(p_tenant BIGINT, p_endpoint TEXT,
                                                 p_endpoint_configured INTEGER)
RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    now_ts TIMESTAMPTZ := clock_timestamp();
    result INTEGER;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO stripe_endpoint_budgets (tenant_id, endpoint, current_rate)
    VALUES (p_tenant, p_endpoint, GREATEST(p_endpoint_configured, 1))
    ON CONFLICT (tenant_id, endpoint) DO NOTHING;
    UPDATE stripe_endpoint_budgets
    SET current_rate = CASE
            WHEN last_decrease IS NOT NULL AND now_ts - last_decrease < interval '1050 milliseconds'
            THEN current_rate ELSE GREATEST(1, current_rate / 2) END,
        last_decrease = CASE
            WHEN last_decrease IS NOT NULL AND now_ts - last_decrease < interval '1050 milliseconds'
            THEN last_decrease ELSE now_ts END,
        last_change = now_ts,
        throttled = stripe_endpoint_budgets.throttled + 1
    WHERE tenant_id = p_tenant AND endpoint = p_endpoint
    RETURNING current_rate INTO result;
    RETURN result;
END $$;
