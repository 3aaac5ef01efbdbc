-- Admin page sessions (issue 10): a signed-in person holds a random session id in an
-- HttpOnly cookie; only its SHA-256 is stored, tied to the API token that signed in.
-- Every page reads the session joined with its token, so revoking or expiring the
-- token ends the session on every replica at once. Rows of ended sessions are
-- deleted on sign-out and swept when they expire.
CREATE TABLE admin_sessions (
    session_hash BYTEA PRIMARY KEY,
    token_id BIGINT NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX admin_sessions_by_expiry ON admin_sessions (expires_at);
CREATE INDEX admin_sessions_by_token ON admin_sessions (token_id);
