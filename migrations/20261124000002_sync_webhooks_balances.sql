-- Account sync runs, processed webhook events, and balance snapshots with the
-- per-account latest and per-tenant totals kept beside them.

CREATE TABLE sync_runs (
    id            UUID PRIMARY KEY,
    tenant_id     BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    status        TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    pages         BIGINT NOT NULL DEFAULT 0,
    accounts_seen BIGINT NOT NULL DEFAULT 0,
    inserted      BIGINT NOT NULL DEFAULT 0,
    updated       BIGINT NOT NULL DEFAULT 0,
    unchanged     BIGINT NOT NULL DEFAULT 0,
    removed       BIGINT NOT NULL DEFAULT 0,
    error         TEXT,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ
);
-- One sync per tenant at a time, across every replica.
CREATE UNIQUE INDEX sync_runs_one_running ON sync_runs (tenant_id) WHERE status = 'running';
CREATE INDEX sync_runs_by_tenant ON sync_runs (tenant_id, started_at DESC);

-- Each Stripe event is applied once per tenant.
CREATE TABLE webhook_events (
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    account     TEXT,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);

-- Every balance fetch (or balance.available event): the balance as Stripe returned
-- it, or the error that stopped it.
CREATE TABLE balance_snapshots (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   BIGINT NOT NULL,
    stripeid    TEXT NOT NULL,
    fetched_at  TIMESTAMPTZ NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('fetch', 'webhook')),
    balance     JSONB,
    error       JSONB,
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE,
    CHECK ((balance IS NULL) <> (error IS NULL))
);
CREATE INDEX balance_snapshots_history ON balance_snapshots (tenant_id, stripeid, fetched_at DESC);

-- Each account's latest snapshot, with its per-currency amounts, so aggregates
-- never scan history.
CREATE TABLE latest_balances (
    tenant_id   BIGINT NOT NULL,
    stripeid    TEXT NOT NULL,
    snapshot_id BIGINT NOT NULL REFERENCES balance_snapshots (id) ON DELETE CASCADE,
    fetched_at  TIMESTAMPTZ NOT NULL,
    ok          BOOLEAN NOT NULL,
    -- [{"currency","available","pending","connect_reserved","instant_available"}]
    amounts     JSONB NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant_id, stripeid),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE
);
CREATE INDEX latest_balances_age ON latest_balances (tenant_id, fetched_at);
CREATE INDEX latest_balances_failed ON latest_balances (tenant_id) WHERE NOT ok;

-- Whole-tenant totals per currency over listed accounts' latest snapshots, changed
-- in the same transaction as the snapshot that moves them.
CREATE TABLE tenant_balance_totals (
    tenant_id         BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    currency          TEXT NOT NULL,
    available         BIGINT NOT NULL DEFAULT 0,
    pending           BIGINT NOT NULL DEFAULT 0,
    connect_reserved  BIGINT NOT NULL DEFAULT 0,
    instant_available BIGINT NOT NULL DEFAULT 0,
    -- Accounts whose latest balance holds this currency; rows at 0 are not reported.
    holders           BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, currency)
);

-- Listed accounts whose latest snapshot is a balance (ok) or an error (failed).
CREATE TABLE tenant_balance_counts (
    tenant_id BIGINT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    ok        BIGINT NOT NULL DEFAULT 0,
    failed    BIGINT NOT NULL DEFAULT 0
);
