-- Last-known-good balances (issue 11, item 4). A failed fetch no longer takes an
-- account out of the totals: each account's latest row keeps two things apart,
--   the latest try:  snapshot_id, fetched_at, ok (did that try return a balance)
--   the latest good: good_snapshot_id, good_at, amounts (that balance's per-currency
--                    amounts; '[]' and NULLs when the account was never read)
-- so the per-tenant totals are the sum of every listed account's last good amounts,
-- and the ok/failed counts still say whether the latest try worked. The refresher's
-- freshness and leases keep reading fetched_at: an account is tried when its latest
-- snapshot, good or error, is recent.
ALTER TABLE latest_balances
    ADD COLUMN good_snapshot_id BIGINT REFERENCES balance_snapshots (id) ON DELETE SET NULL,
    ADD COLUMN good_at TIMESTAMPTZ;

-- Accounts whose latest try worked: that try is also the latest good one.
UPDATE latest_balances SET good_snapshot_id = snapshot_id, good_at = fetched_at WHERE ok;

-- Accounts whose latest try failed: their newest stored balance, if any, becomes the
-- last good one, with its amounts computed as tally computes them (per lowercase
-- currency, the sums of available, pending, connect_reserved, instant_available;
-- every stored balance was summed without overflow when it was recorded).
CREATE TEMPORARY TABLE last_good_backfill AS
WITH good AS (
    SELECT l.tenant_id, l.stripeid, g.id, g.fetched_at, g.balance
    FROM latest_balances l
    CROSS JOIN LATERAL (
        SELECT s.id, s.fetched_at, s.balance FROM balance_snapshots s
        WHERE s.tenant_id = l.tenant_id AND s.stripeid = l.stripeid AND s.balance IS NOT NULL
        ORDER BY s.fetched_at DESC, s.id DESC
        LIMIT 1
    ) g
    WHERE NOT l.ok
), entries AS (
    SELECT g.tenant_id, g.stripeid, k.kind, lower(e->>'currency') AS currency,
           (e->>'amount')::bigint AS amount
    FROM good g
    CROSS JOIN (VALUES ('available'), ('pending'), ('connect_reserved'), ('instant_available')) AS k(kind)
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(g.balance -> k.kind) = 'array' THEN g.balance -> k.kind
             ELSE '[]'::jsonb END) AS e
), per_currency AS (
    SELECT tenant_id, stripeid, currency,
           COALESCE(sum(amount) FILTER (WHERE kind = 'available'), 0)::bigint AS available,
           COALESCE(sum(amount) FILTER (WHERE kind = 'pending'), 0)::bigint AS pending,
           COALESCE(sum(amount) FILTER (WHERE kind = 'connect_reserved'), 0)::bigint AS connect_reserved,
           COALESCE(sum(amount) FILTER (WHERE kind = 'instant_available'), 0)::bigint AS instant_available
    FROM entries
    GROUP BY tenant_id, stripeid, currency
)
SELECT g.tenant_id, g.stripeid, g.id AS good_snapshot_id, g.fetched_at AS good_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                        'currency', c.currency, 'available', c.available, 'pending', c.pending,
                        'connect_reserved', c.connect_reserved,
                        'instant_available', c.instant_available) ORDER BY c.currency)
                 FROM per_currency c
                 WHERE c.tenant_id = g.tenant_id AND c.stripeid = g.stripeid), '[]'::jsonb) AS amounts
FROM good g;

UPDATE latest_balances l
SET good_snapshot_id = b.good_snapshot_id, good_at = b.good_at, amounts = b.amounts
FROM last_good_backfill b
WHERE l.tenant_id = b.tenant_id AND l.stripeid = b.stripeid;

-- Those amounts join the totals (they held nothing for these accounts before); the
-- ok/failed counts do not move.
INSERT INTO tenant_balance_totals AS t
    (tenant_id, currency, available, pending, connect_reserved, instant_available, holders)
SELECT b.tenant_id, e.currency, sum(e.available)::bigint, sum(e.pending)::bigint,
       sum(e.connect_reserved)::bigint, sum(e.instant_available)::bigint, count(*)
FROM last_good_backfill b
JOIN stripe_accounts a ON a.tenant_id = b.tenant_id AND a.stripeid = b.stripeid
CROSS JOIN LATERAL jsonb_to_recordset(b.amounts)
    AS e(currency text, available bigint, pending bigint, connect_reserved bigint,
         instant_available bigint)
WHERE a.removed_at IS NULL
GROUP BY b.tenant_id, e.currency
ON CONFLICT (tenant_id, currency) DO UPDATE SET
    available = t.available + EXCLUDED.available,
    pending = t.pending + EXCLUDED.pending,
    connect_reserved = t.connect_reserved + EXCLUDED.connect_reserved,
    instant_available = t.instant_available + EXCLUDED.instant_available,
    holders = t.holders + EXCLUDED.holders;

DROP TABLE last_good_backfill;
