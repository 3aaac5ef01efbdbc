-- Following what changes (issue "Follow what changes"): Connect events mark accounts
-- changed, changed accounts are fetched within about a second, and a tenant in
-- `events` mode lets a live event stream vouch for the accounts nothing happened to.

-- How a tenant's balances are kept current: `poll` re-reads every account within
-- `refresh.interval_secs`; `events` re-reads changed accounts at once and sweeps the
-- rest every `refresh.sweep_interval_secs`.
ALTER TABLE tenants ADD COLUMN freshness TEXT NOT NULL DEFAULT 'poll'
    CHECK (freshness IN ('poll', 'events'));

-- Accounts an event said changed since their latest fetch. A burst of events for one
-- account is one row (one fetch); the fetch that starts after the last of them
-- removes it, in the transaction that stores the snapshot.
CREATE TABLE changed_accounts (
    tenant_id      BIGINT NOT NULL,
    stripeid       TEXT NOT NULL,
    -- Arrival of the first event not yet covered by a fetch: the fetch is due
    -- `refresh.change_delay_ms` after it.
    first_event_at TIMESTAMPTZ NOT NULL,
    -- Arrival of the latest: only a fetch started after it covers the row.
    last_event_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, stripeid),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE
);
CREATE INDEX changed_accounts_due ON changed_accounts (tenant_id, first_event_at);

-- Each tenant's Connect event stream, as far as it can vouch for accounts: events
-- arrive (the latest at `last_event_at`) and none was refused or lost since
-- `vouched_since`. A silence longer than `webhooks.max_silence_secs` or a refused
-- event moves `vouched_since` to the next event, so only accounts fetched after it
-- can be vouched for.
CREATE TABLE event_streams (
    tenant_id     BIGINT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    last_event_at TIMESTAMPTZ,
    vouched_since TIMESTAMPTZ NOT NULL
);

-- The Connect webhook endpoints `tally tenant webhooks` registered at Stripe: one for
-- a platform tenant (platform_id ''), one per platform for an organization tenant.
-- Secrets sealed like the tenant's key; `/webhooks/stripe/{tenant}` accepts any.
CREATE TABLE webhook_endpoints (
    tenant_id         BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    platform_id       TEXT NOT NULL DEFAULT '',
    endpoint_id       TEXT NOT NULL,
    url               TEXT NOT NULL,
    secret_ciphertext BYTEA NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, platform_id)
);
