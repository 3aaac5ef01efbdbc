-- Sync runs hold a short lease (issue 11, item 5): a running run renews it on a timer
-- (`sync.lease_secs`, default 30 s, renewed about every sixth of that) whatever its
-- pages do, and a new sync takes over a run whose lease expired at once, marking it
-- `interrupted`. The run states its own lease, so a claimer with another setting
-- judges it by the holder's. NULL (a run started before this migration, by a process
-- that beats only `heartbeat_at`): it expires 5 minutes after its last heartbeat, as
-- such runs always did.
ALTER TABLE sync_runs ADD COLUMN lease_expires_at TIMESTAMPTZ;
