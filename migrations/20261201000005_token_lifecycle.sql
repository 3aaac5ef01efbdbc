-- Token lifecycle (issue 9): a name, the first characters to recognise a token by,
-- an expiry, revocation (kept, never deleted, so the audit of who used what stays
-- readable), and when it was last used (written in batches, not per request).
ALTER TABLE api_tokens
    ADD COLUMN name TEXT CHECK (name IS NULL OR length(name) BETWEEN 1 AND 100),
    ADD COLUMN prefix TEXT NOT NULL DEFAULT '',
    ADD COLUMN expires_at TIMESTAMPTZ,
    ADD COLUMN revoked_at TIMESTAMPTZ,
    ADD COLUMN last_used_at TIMESTAMPTZ;
CREATE INDEX api_tokens_by_tenant ON api_tokens (tenant_id, id);
