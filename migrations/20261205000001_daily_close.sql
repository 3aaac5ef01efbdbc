-- The daily close (issue "The daily close"): each connected account's balance
-- transactions, how far they have been read, and each account's closed days.

-- The local day a tenant's books close by (an IANA zone name, checked by the app).
ALTER TABLE tenants ADD COLUMN close_timezone TEXT NOT NULL DEFAULT 'UTC';

-- When Stripe read the balance, by Stripe's clock: the `Date` of the balance response,
-- or the `created` of a `balance.available` event. Lines a snapshot up with balance
-- transactions' `created` for the tie-out (tally's `fetched_at` is its own clock).
ALTER TABLE balance_snapshots ADD COLUMN stripe_at TIMESTAMPTZ;
CREATE INDEX balance_snapshots_stripe_at ON balance_snapshots (tenant_id, stripeid, stripe_at)
    WHERE stripe_at IS NOT NULL AND balance IS NOT NULL;

-- Stripe's balance transactions of each account, as Stripe sent them (minor units;
-- times on Stripe's clock). Stored once per id.
CREATE TABLE balance_transactions (
    tenant_id          BIGINT NOT NULL,
    id                 TEXT NOT NULL,
    stripeid           TEXT NOT NULL,
    type               TEXT NOT NULL,
    reporting_category TEXT NOT NULL,
    amount             BIGINT NOT NULL,
    fee                BIGINT NOT NULL,
    net                BIGINT NOT NULL,
    currency           TEXT NOT NULL,
    created            TIMESTAMPTZ NOT NULL,
    available_on       TIMESTAMPTZ NOT NULL,
    status             TEXT NOT NULL,
    source             TEXT,
    -- The payout a payout transaction (or its cancel/failure) belongs to.
    payout             TEXT,
    stored_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE
);
CREATE INDEX balance_transactions_by_account ON balance_transactions (tenant_id, stripeid, created);
-- A day's activity for the whole tenant, and money that became available that day.
CREATE INDEX balance_transactions_by_created ON balance_transactions (tenant_id, created);
CREATE INDEX balance_transactions_by_available ON balance_transactions
    (tenant_id, (GREATEST(created, available_on)));

-- How much of each account's ledger is stored: every transaction created at or after
-- `complete_from` and at or before `complete_to` (Stripe's clock). Reads after a fetch
-- move `complete_to` forward; a backfill moves `complete_from` back, page by page.
CREATE TABLE ledger_reads (
    tenant_id     BIGINT NOT NULL,
    stripeid      TEXT NOT NULL,
    complete_from TIMESTAMPTZ NOT NULL,
    complete_to   TIMESTAMPTZ NOT NULL,
    read_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, stripeid),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE,
    CHECK (complete_from <= complete_to)
);

-- One account's day in one currency: opening + activity = closing, and whether the
-- closing ties out to a balance Stripe answered.
CREATE TABLE account_closes (
    tenant_id          BIGINT NOT NULL,
    day                DATE NOT NULL,
    stripeid           TEXT NOT NULL,
    currency           TEXT NOT NULL,
    opening_available  BIGINT NOT NULL,
    opening_pending    BIGINT NOT NULL,
    closing_available  BIGINT NOT NULL,
    closing_pending    BIGINT NOT NULL,
    -- {"charge": {"count": n, "amount": a, "fee": f, "net": n}, …} by reporting_category
    activity           JSONB NOT NULL,
    transactions       INTEGER NOT NULL,
    tieout             TEXT NOT NULL CHECK (tieout IN ('matched', 'difference', 'unverified')),
    -- The balance Stripe answered (rolled back to the day's end) minus the closing.
    difference_available BIGINT,
    difference_pending   BIGINT,
    checked_snapshot_id  BIGINT,
    checked_stripe_at    TIMESTAMPTZ,
    computed_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, day, stripeid, currency),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE
);
CREATE INDEX account_closes_by_account ON account_closes (tenant_id, stripeid, day);
-- The closer re-checks unverified accounts of closed days once a newer balance exists.
CREATE INDEX account_closes_unverified ON account_closes (tenant_id, day) WHERE tieout = 'unverified';

-- A tenant's day: its zone and UTC bounds when computed, when it closed (settled), how
-- often a late transaction reopened it.
CREATE TABLE day_closes (
    tenant_id    BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day          DATE NOT NULL,
    timezone     TEXT NOT NULL,
    starts_at    TIMESTAMPTZ NOT NULL,
    ends_at      TIMESTAMPTZ NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL,
    closed_at    TIMESTAMPTZ,
    reopened     INTEGER NOT NULL DEFAULT 0,
    -- Per currency totals of the day's account rows, kept so an answer reads one row.
    summary      JSONB NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, day)
);

-- Accounts whose closed days a late transaction touched, from that day on.
CREATE TABLE close_reopens (
    tenant_id   BIGINT NOT NULL,
    stripeid    TEXT NOT NULL,
    from_day    DATE NOT NULL,
    transactions INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, stripeid),
    FOREIGN KEY (tenant_id, stripeid) REFERENCES stripe_accounts (tenant_id, stripeid) ON DELETE CASCADE
);

-- The system closes days on its own: the audit log names it as actor kind `system`.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_kind_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_kind_check
    CHECK (actor_kind IN ('token', 'cli', 'system'));
