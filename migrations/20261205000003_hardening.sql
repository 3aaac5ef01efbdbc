-- Hardening, second pass (issue 18, item 2): no stored time lies in the future.
--
-- An event is placed at its arrival when it claims a later time. An earlier version
-- let such a time through: an `account.updated` from the future made every later
-- event and sync of its account "stale", and a `balance.available` from the future
-- stayed the account's latest balance, fresh for any `max_age`, until that time came.
-- What was stored that way is brought back to now (this migration's transaction).

UPDATE stripe_accounts SET observed_at = now() WHERE observed_at > now();

UPDATE latest_balances
SET fetched_at = CASE WHEN fetched_at > now() THEN now() ELSE fetched_at END,
    good_at = CASE WHEN good_at > now() THEN now() ELSE good_at END
WHERE fetched_at > now() OR good_at > now();

-- Snapshots, and the totals over time of their tenants rebuilt from them as they now stand.
DO $$
DECLARE
    tenant BIGINT;
BEGIN
    FOR tenant IN
        SELECT DISTINCT tenant_id FROM balance_snapshots WHERE fetched_at > now() ORDER BY tenant_id
    LOOP
        UPDATE balance_snapshots SET fetched_at = now()
        WHERE tenant_id = tenant AND fetched_at > now();
        PERFORM balance_history_rebuild(tenant);
    END LOOP;
END $$;
