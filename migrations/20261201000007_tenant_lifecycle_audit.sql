-- Tenant lifecycle and the audit log (issue 9 items 2-4).
--
-- `version` goes up with every change to a tenant (key, settings, removal), so each
-- process rebuilds its cached Stripe client when the row it reads is newer than the
-- one the client was built from. `disabled_at` marks a removed tenant: its tokens are
-- refused, the refresher and sync skip it, its data stays.
ALTER TABLE tenants
    ADD COLUMN version BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN disabled_at TIMESTAMPTZ;

-- Who changed what, and when. No foreign keys: a purged tenant's records, and those
-- of tokens deleted with it, must survive the purge, so the tenant is kept as its
-- slug and the token as its id and name, as text and numbers. Never a secret.
CREATE TABLE audit_events (
    id             BIGSERIAL PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'token' (an API token, by id and name) or 'cli' (the tally CLI, with the OS user).
    actor_kind     TEXT NOT NULL CHECK (actor_kind IN ('token', 'cli')),
    actor_token_id BIGINT,
    actor_name     TEXT,
    action         TEXT NOT NULL,
    tenant_slug    TEXT,
    details        JSONB NOT NULL DEFAULT '{}',
    CHECK ((actor_kind = 'token') = (actor_token_id IS NOT NULL))
);

-- Newest first, everything or one tenant's.
CREATE INDEX audit_events_by_tenant ON audit_events (tenant_slug, id DESC);
