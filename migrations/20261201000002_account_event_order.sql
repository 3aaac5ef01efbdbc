-- Stripe does not deliver events in order, and a sync page can race a webhook: each
-- stored account remembers when the Stripe state that last wrote it was observed, so
-- an older observation never replaces a newer one. A sync page is observed when its
-- request was sent; an event at its `created` (whole seconds; see store::accounts).
-- NULL (rows written before this migration): older than anything.
ALTER TABLE stripe_accounts ADD COLUMN observed_at TIMESTAMPTZ;
