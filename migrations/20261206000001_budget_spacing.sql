-- The shared budget's slot spacing goes from 1.05 / rate to 1.012 / rate (issue "One
-- contract, one shape" item 6): the 5 % margin alone capped one fan-out at 0.952 of N / R.
-- What the spacing must guarantee is that no one-second window holds more than the rate
-- of requests sent. A request is sent within 10 ms of its slot (or reserves again:
-- shared_budget::LATE_TOLERANCE), so the sends of any second come from slots within
-- 1.01 s, and R + 1 slots span R x 1.012 / R = 1.012 s > 1.01 s: at most R. Network
-- jitter on the way to Stripe is absorbed by the gap between the tenant's rate and
-- Stripe's limit (20/s against 25/s by default), not by the spacing. Same body as
-- 20261204000002's stripe_budget_reserve_endpoint otherwise, which stays as it was: a
-- replica of the previous version still calls it, with its 20 ms tolerance, during a
-- rolling upgrade (migrations add, they never edit what was released).
CREATE FUNCTION stripe_budget_reserve_slot(p_tenant BIGINT, p_configured INTEGER,
                                               p_endpoint TEXT, p_endpoint_configured INTEGER,
                                               p_horizon_ms INTEGER)
RETURNS TABLE (slot_at TIMESTAMPTZ, db_now TIMESTAMPTZ, granted BOOLEAN, rate INTEGER)
LANGUAGE plpgsql AS $$
DECLARE
    b        stripe_budgets%ROWTYPE;
    e        stripe_endpoint_budgets%ROWTYPE;
    now_ts   TIMESTAMPTZ;
    start_at TIMESTAMPTZ;
    window_s CONSTANT DOUBLE PRECISION := 1.012;
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
