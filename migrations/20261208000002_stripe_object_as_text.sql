-- Stripe's account object is kept as the JSON text tally received (`json`, validated on
-- the way in) instead of `jsonb`. Nothing queries inside it; every listing sends it
-- out as text, and turning `jsonb` back into text cost Postgres 1.5 µs per record
-- (2.1 ms against 0.6 ms for a 1,024-record chunk of `all=true`), the largest part
-- of a streamed listing's cost. Rows written before keep jsonb's text form
-- (`{"id": "acct_…", …}`): the same JSON, spaced. The upsert compares objects as
-- jsonb (key order and spacing do not make a change).
ALTER TABLE stripe_accounts ALTER COLUMN stripe_object TYPE json USING stripe_object::json;
