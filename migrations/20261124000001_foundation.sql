-- tally's foundation: tenants, their connected accounts, and API tokens.

CREATE TABLE tenants (
    id                 BIGSERIAL PRIMARY KEY,
    slug               TEXT NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    credential_kind    TEXT NOT NULL CHECK (credential_kind IN ('platform', 'organization')),
    -- AES-256-GCM: 12-byte nonce followed by ciphertext and tag; AAD is the slug.
    key_ciphertext     BYTEA NOT NULL,
    key_last4          TEXT NOT NULL,
    api_version        TEXT NOT NULL,
    api_base           TEXT,
    rate_limit         INTEGER CHECK (rate_limit IS NULL OR rate_limit > 0),
    -- Organization tenants: the platforms in the org, and accounts directly in it.
    platform_ids       TEXT[] NOT NULL DEFAULT '{}',
    org_account_ids    TEXT[] NOT NULL DEFAULT '{}',
    webhook_secret_ciphertext BYTEA,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE stripe_accounts (
    tenant_id     BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    stripeid      TEXT NOT NULL,
    -- The platform's own owner id, from the Stripe account's metadata.
    accountid     TEXT,
    -- The platform that controls the account; NULL for accounts directly in the org
    -- (or for every account of a platform tenant). The Stripe header derives from it.
    platform_id   TEXT,
    stripe_object JSONB NOT NULL,
    -- Stripe's `created`.
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when Stripe stops returning the account or access is revoked; such records
    -- are kept (nothing a user stored is lost) but left out of listings and aggregates.
    removed_at    TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, stripeid)
);

-- Newest-first paging, and paging one owner's accounts, by index.
CREATE INDEX stripe_accounts_newest
    ON stripe_accounts (tenant_id, created_at DESC, stripeid)
    WHERE removed_at IS NULL;
CREATE INDEX stripe_accounts_owner
    ON stripe_accounts (tenant_id, accountid, created_at DESC, stripeid)
    WHERE removed_at IS NULL;

-- Listed accounts per tenant, kept by statement-level triggers so that counting a
-- million-account tenant (X-Total-Count) never scans.
CREATE TABLE tenant_account_counts (
    tenant_id BIGINT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    listed    BIGINT NOT NULL DEFAULT 0
);

CREATE FUNCTION tenant_account_counts_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO tenant_account_counts AS c (tenant_id, listed)
        SELECT tenant_id, count(*) FROM new_rows WHERE removed_at IS NULL GROUP BY tenant_id
        ON CONFLICT (tenant_id) DO UPDATE SET listed = c.listed + EXCLUDED.listed;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE tenant_account_counts AS c SET listed = c.listed - o.n
        FROM (SELECT tenant_id, count(*) AS n FROM old_rows WHERE removed_at IS NULL
              GROUP BY tenant_id) AS o
        WHERE c.tenant_id = o.tenant_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER stripe_accounts_count_insert AFTER INSERT ON stripe_accounts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_account_counts_apply();
CREATE TRIGGER stripe_accounts_count_update AFTER UPDATE ON stripe_accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_account_counts_apply();
CREATE TRIGGER stripe_accounts_count_delete AFTER DELETE ON stripe_accounts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_account_counts_apply();

CREATE TABLE api_tokens (
    id          BIGSERIAL PRIMARY KEY,
    -- SHA-256 of the token: tokens are 256-bit random, so a fast hash is enough.
    token_hash  BYTEA NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'reader')),
    tenant_id   BIGINT REFERENCES tenants (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Owners see every tenant; admins and readers exactly one.
    CHECK ((role = 'owner') = (tenant_id IS NULL))
);
