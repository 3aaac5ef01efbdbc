-- The shared budget's slot spacing comes from the caller (shared_budget::SLOT_SPACING,
-- 1.006 s / rate), next to the tolerance it must stay above (LATE_TOLERANCE, 5 ms), which
-- a compile-time check ties together: slots `spacing / rate` apart, each sent within the
-- tolerance after it, put at most `rate` requests into any second while spacing > 1 +
-- tolerance. The tolerance could halve because a process now places a slot on its own
-- clock by its fastest recent reply (shared_budget::DbClock), not by this reply's round
-- trip, which includes the wait for the budget's row lock (10-20 ms with a dozen
-- reservations queued: every such slot used to be given up).
-- It also returns when the statement arrived (`db_asked`, statement_timestamp()):
-- `db_now - db_asked` is how long the reservation waited for the row locks, which the
-- caller takes off the round trip's uncertainty.
-- Same body as 20261206000001's stripe_budget_reserve_slot otherwise, which stays: a
-- replica of the previous version calls it during a rolling upgrade.
CREATE FUNCTION stripe_budget_reserve_spaced(p_tenant BIGINT, p_configured INTEGER,
                                            p_endpoint TEXT, p_endpoint_configured INTEGER,
                                            p_horizon_ms INTEGER, p_spacing DOUBLE PRECISION)
RETURNS TABLE (slot_at TIMESTAMPTZ, db_now TIMESTAMPTZ, granted BOOLEAN, rate INTEGER,
               db_asked TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
DECLARE
    b        stripe_budgets%ROWTYPE;
    e        stripe_endpoint_budgets%ROWTYPE;
    now_ts   TIMESTAMPTZ;
    start_at TIMESTAMPTZ;
    window_s CONSTANT DOUBLE PRECISION := GREATEST(p_spacing, 1.0);
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
        RETURN QUERY SELECT start_at, now_ts, false, LEAST(b.current_rate, e.current_rate),
            statement_timestamp();
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
    RETURN QUERY SELECT start_at, now_ts, true, LEAST(b.current_rate, e.current_rate),
            statement_timestamp();
END $$;
