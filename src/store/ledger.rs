//! Balance transactions and how far each account's ledger has been read
//! (`balance_transactions`, `ledger_reads`). Times are Stripe's clock.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use super::refreshes::Claimed;
use crate::domain::StripeAccountId;

/// One balance transaction as kept: Stripe's fields, amounts in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: String,
    pub kind: String,
    pub reporting_category: String,
    pub amount: i64,
    pub fee: i64,
    pub net: i64,
    pub currency: String,
    pub created: DateTime<Utc>,
    pub available_on: DateTime<Utc>,
    pub status: String,
    pub source: Option<String>,
    pub payout: Option<String>,
}

/// Stores `txns` of one account, each id once. Returns how many were new; new ones
/// created within a day the account already has a close for are remembered for the
/// closer (`close_reopens`), which recomputes from that day on.
pub async fn store(
    conn: &mut PgConnection,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    txns: &[Transaction],
) -> Result<u64, sqlx::Error> {
    if txns.is_empty() {
        return Ok(0);
    }
    let column = |f: fn(&Transaction) -> String| txns.iter().map(f).collect::<Vec<_>>();
    let ids = column(|t| t.id.clone());
    let kinds = column(|t| t.kind.clone());
    let categories = column(|t| t.reporting_category.clone());
    let currencies = column(|t| t.currency.clone());
    let statuses = column(|t| t.status.clone());
    let amounts: Vec<i64> = txns.iter().map(|t| t.amount).collect();
    let fees: Vec<i64> = txns.iter().map(|t| t.fee).collect();
    let nets: Vec<i64> = txns.iter().map(|t| t.net).collect();
    let created: Vec<DateTime<Utc>> = txns.iter().map(|t| t.created).collect();
    let available_on: Vec<DateTime<Utc>> = txns.iter().map(|t| t.available_on).collect();
    let sources: Vec<Option<String>> = txns.iter().map(|t| t.source.clone()).collect();
    let payouts: Vec<Option<String>> = txns.iter().map(|t| t.payout.clone()).collect();
    let mut tx = super::begin_on(&mut *conn).await?;
    let new_created = sqlx::query_scalar!(
        r#"INSERT INTO balance_transactions
               (tenant_id, stripeid, id, type, reporting_category, amount, fee, net, currency,
                created, available_on, status, source, payout)
           SELECT $1, $2, t.* FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bigint[],
                  $7::bigint[], $8::bigint[], $9::text[], $10::timestamptz[],
                  $11::timestamptz[], $12::text[], $13::text[], $14::text[]) AS t
           ON CONFLICT (tenant_id, id) DO NOTHING
           RETURNING created"#,
        tenant_id,
        stripeid.as_str(),
        &ids,
        &kinds,
        &categories,
        &amounts,
        &fees,
        &nets,
        &currencies,
        &created,
        &available_on,
        &statuses,
        &sources as &[Option<String>],
        &payouts as &[Option<String>],
    )
    .fetch_all(&mut *tx)
    .await?;
    if !new_created.is_empty() {
        // A late transaction: its local day (or a later one) is already computed.
        sqlx::query!(
            r#"INSERT INTO close_reopens (tenant_id, stripeid, from_day, transactions)
               SELECT $1, $2, min(d.day), count(*)
               FROM (SELECT (c AT TIME ZONE t.close_timezone)::date AS day
                     FROM UNNEST($3::timestamptz[]) AS c, tenants t WHERE t.id = $1) d
               WHERE EXISTS (SELECT 1 FROM account_closes a
                             WHERE a.tenant_id = $1 AND a.stripeid = $2 AND a.day >= d.day)
               HAVING count(*) > 0
               ON CONFLICT (tenant_id, stripeid) DO UPDATE
               SET from_day = LEAST(close_reopens.from_day, EXCLUDED.from_day),
                   transactions = close_reopens.transactions + EXCLUDED.transactions"#,
            tenant_id,
            stripeid.as_str(),
            &new_created
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(new_created.len() as u64)
}

/// What of an account's ledger is stored: every transaction created within
/// `[complete_from, complete_to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerRead {
    pub complete_from: DateTime<Utc>,
    pub complete_to: DateTime<Utc>,
}

pub async fn read_of(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
) -> Result<Option<LedgerRead>, sqlx::Error> {
    sqlx::query_as!(
        LedgerRead,
        "SELECT complete_from, complete_to FROM ledger_reads WHERE tenant_id = $1 AND stripeid = $2",
        tenant_id,
        stripeid.as_str()
    )
    .fetch_optional(db)
    .await
}

/// Everything up to `to` is stored (from `from` when the account had no read yet).
pub async fn extend_to(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO ledger_reads (tenant_id, stripeid, complete_from, complete_to)
           VALUES ($1, $2, LEAST($3::timestamptz, $4::timestamptz), $4)
           ON CONFLICT (tenant_id, stripeid) DO UPDATE
           SET complete_to = GREATEST(ledger_reads.complete_to, EXCLUDED.complete_to),
               read_at = now()"#,
        tenant_id,
        stripeid.as_str(),
        from,
        to
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Everything from `from` on is stored (a backfill page landed).
pub async fn extend_from(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    from: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE ledger_reads SET complete_from = LEAST(complete_from, $3)
           WHERE tenant_id = $1 AND stripeid = $2"#,
        tenant_id,
        stripeid.as_str(),
        from
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The tenant's ledger as a whole: the earliest instant any account is read from, and
/// the latest Stripe time any read reached (the closer's clock).
#[derive(Debug, Clone, Copy)]
pub struct TenantLedger {
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub accounts: i64,
}

pub async fn tenant_ledger(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<TenantLedger, sqlx::Error> {
    sqlx::query_as!(
        TenantLedger,
        r#"SELECT min(r.complete_from) AS earliest, max(r.complete_to) AS latest,
                  count(*) AS "accounts!"
           FROM ledger_reads r JOIN stripe_accounts a USING (tenant_id, stripeid)
           WHERE r.tenant_id = $1 AND a.removed_at IS NULL"#,
        tenant_id
    )
    .fetch_one(db)
    .await
}

/// A transaction as the closer reads it.
#[derive(Debug, Clone)]
pub struct Movement {
    pub stripeid: String,
    pub currency: String,
    pub reporting_category: String,
    pub amount: i64,
    pub fee: i64,
    pub net: i64,
    pub created: DateTime<Utc>,
    pub available_on: DateTime<Utc>,
}

/// The tenant's transactions that moved a balance within `[from, until)`: created
/// then, or became available then (`GREATEST(created, available_on)`).
pub async fn movements(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<Movement>, sqlx::Error> {
    sqlx::query_as!(
        Movement,
        r#"SELECT t.stripeid, t.currency, t.reporting_category, t.amount, t.fee, t.net,
                  t.created, t.available_on
           FROM balance_transactions t JOIN stripe_accounts a USING (tenant_id, stripeid)
           WHERE t.tenant_id = $1 AND a.removed_at IS NULL
             AND ((t.created >= $2 AND t.created < $3)
                  OR (GREATEST(t.created, t.available_on) >= $2
                      AND GREATEST(t.created, t.available_on) < $3))"#,
        tenant_id,
        from,
        until
    )
    .fetch_all(db)
    .await
}

/// Per account, the movements within `[from, until)` where `until` differs by account:
/// what lies between an instant and the balance Stripe answered after it.
pub async fn movements_until(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    from: DateTime<Utc>,
    untils: &[(String, DateTime<Utc>)],
) -> Result<Vec<Movement>, sqlx::Error> {
    let (ids, times): (Vec<String>, Vec<DateTime<Utc>>) = untils.iter().cloned().unzip();
    sqlx::query_as!(
        Movement,
        r#"SELECT t.stripeid, t.currency, t.reporting_category, t.amount, t.fee, t.net,
                  t.created, t.available_on
           FROM UNNEST($2::text[], $3::timestamptz[]) AS x(stripeid, until)
           JOIN balance_transactions t ON t.tenant_id = $1 AND t.stripeid = x.stripeid
           WHERE (t.created >= $4 AND t.created < x.until)
              OR (GREATEST(t.created, t.available_on) >= $4
                  AND GREATEST(t.created, t.available_on) < x.until)"#,
        tenant_id,
        &ids,
        &times,
        from
    )
    .fetch_all(db)
    .await
}

/// A balance Stripe answered, with its instant on Stripe's clock.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub stripeid: String,
    pub snapshot_id: i64,
    pub stripe_at: DateTime<Utc>,
    pub balance: Value,
}

/// Per listed account with a ledger read, its first balance answered at or after
/// `at` whose transactions up to it are all stored (`stripe_at <= complete_to`) and
/// that no transaction shares its second with.
pub async fn first_checkpoints(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    at: DateTime<Utc>,
) -> Result<Vec<Checkpoint>, sqlx::Error> {
    sqlx::query_as!(
        Checkpoint,
        r#"SELECT r.stripeid, s.id AS "snapshot_id!", s.stripe_at AS "stripe_at!",
                  s.balance AS "balance!"
           FROM ledger_reads r
           JOIN stripe_accounts a USING (tenant_id, stripeid)
           CROSS JOIN LATERAL (
               SELECT id, stripe_at, balance FROM balance_snapshots s
               WHERE s.tenant_id = r.tenant_id AND s.stripeid = r.stripeid
                 AND s.stripe_at IS NOT NULL AND s.balance IS NOT NULL
                 AND s.stripe_at >= $2 AND s.stripe_at <= r.complete_to
                 -- Stripe's times are whole seconds: a balance answered within the
                 -- second a transaction was created may or may not hold it. Such a
                 -- balance proves nothing; the next one does.
                 AND NOT EXISTS (SELECT 1 FROM balance_transactions t
                                 WHERE t.tenant_id = s.tenant_id AND t.stripeid = s.stripeid
                                   AND t.created = s.stripe_at)
               ORDER BY s.stripe_at LIMIT 1) s
           WHERE r.tenant_id = $1 AND a.removed_at IS NULL"#,
        tenant_id,
        at
    )
    .fetch_all(db)
    .await
}

/// Listed accounts whose ledger is read from `at` or earlier (a day starting at `at`
/// can be their first).
pub async fn read_from_by(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    at: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT r.stripeid FROM ledger_reads r JOIN stripe_accounts a USING (tenant_id, stripeid)
           WHERE r.tenant_id = $1 AND a.removed_at IS NULL AND r.complete_from <= $2"#,
        tenant_id,
        at
    )
    .fetch_all(db)
    .await
}

/// The transactions nearest `at` of one account and currency: what an accountant
/// looks at first when a day does not tie out.
pub async fn nearest(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &str,
    currency: &str,
    at: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Transaction>, sqlx::Error> {
    sqlx::query_as!(
        Transaction,
        r#"SELECT id, type AS kind, reporting_category, amount, fee, net, currency, created,
                  available_on, status, source, payout
           FROM balance_transactions
           WHERE tenant_id = $1 AND stripeid = $2 AND currency = $3
           ORDER BY abs(extract(epoch FROM created - $4)), id LIMIT $5"#,
        tenant_id,
        stripeid,
        currency,
        at,
        limit
    )
    .fetch_all(db)
    .await
}

/// The tenant's listed accounts, by id (a backfill walks them in this order).
pub async fn listed_accounts(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"SELECT stripeid AS "stripeid: StripeAccountId",
                  platform_id AS "platform_id: StripeAccountId"
           FROM stripe_accounts
           WHERE tenant_id = $1 AND removed_at IS NULL ORDER BY stripeid"#,
        tenant_id
    )
    .fetch_all(db)
    .await
}

/// Records when Stripe read a stored balance (its `Date`, or a `balance.available`
/// event's `created`): the instant the tie-out lines it up with transactions at.
pub async fn mark_answered_at(
    db: impl PgExecutor<'_>,
    snapshot_id: i64,
    stripe_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE balance_snapshots SET stripe_at = $2 WHERE id = $1",
        snapshot_id,
        stripe_at
    )
    .execute(db)
    .await?;
    Ok(())
}
