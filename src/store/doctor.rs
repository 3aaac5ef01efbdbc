//! `tally doctor`: the per-tenant counters that application code keeps in step with
//! the rows they summarise (`tenant_balance_totals` with its negative-balance exposure,
//! `tenant_balance_counts`, and the
//! trigger-kept `tenant_account_counts`), recomputed from those rows, compared, and
//! repaired. They drift only when rows change outside tally (a hand-written UPDATE, a
//! restore of some tables), so this is an operator's check, not a request path: it
//! scans every listed account's latest balance.

use sqlx::{PgConnection, Postgres, Transaction};

use crate::money::{Amounts, Exposure};

/// A currency's stored or recomputed total, how many listed accounts hold it, and the
/// exposure of those whose available balance in it is below zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CurrencyTotal {
    pub amounts: Amounts,
    pub holders: i64,
    pub exposure: Exposure,
}

/// One tenant and currency whose stored total is not what its accounts add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalsDrift {
    pub tenant_id: i64,
    pub tenant: String,
    pub currency: String,
    pub stored: CurrencyTotal,
    pub recomputed: CurrencyTotal,
}

/// Listed accounts whose latest snapshot is a balance (ok) or an error (failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceCounts {
    pub ok: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountsDrift {
    pub tenant_id: i64,
    pub tenant: String,
    pub stored: BalanceCounts,
    pub recomputed: BalanceCounts,
}

/// The listed-account count (`X-Total-Count`, `accounts.total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDrift {
    pub tenant_id: i64,
    pub tenant: String,
    pub stored: i64,
    pub recomputed: i64,
}

/// Every counter that differs from its recomputation; empty when all agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub totals: Vec<TotalsDrift>,
    pub counts: Vec<CountsDrift>,
    pub listed: Vec<ListedDrift>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.totals.is_empty() && self.counts.is_empty() && self.listed.is_empty()
    }

    /// How many counters drifted.
    pub fn len(&self) -> usize {
        self.totals.len() + self.counts.len() + self.listed.len()
    }
}

/// Starts a transaction in which the counters and the rows they summarise stay
/// still: read-only at one snapshot to check, or holding off every writer of
/// accounts and latest balances (snapshots, syncs, webhooks wait) to repair, so no
/// concurrent change lands between the recomputation and the fix.
pub async fn begin(
    conn: &mut PgConnection,
    repair: bool,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    let mut tx = super::begin_on(conn).await?;
    if repair {
        sqlx::query!("LOCK TABLE stripe_accounts, latest_balances IN SHARE MODE")
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// Recomputes every tenant's counters and returns those that differ from what is stored.
pub async fn find_drift(conn: &mut PgConnection) -> Result<Drift, sqlx::Error> {
    Ok(Drift {
        totals: totals_drift(&mut *conn).await?,
        counts: counts_drift(&mut *conn).await?,
        listed: listed_drift(&mut *conn).await?,
    })
}

/// Per tenant and currency: the sum of each listed account's last good amounts
/// (`latest_balances.amounts`, kept while the latest try fails), how many of those
/// accounts hold the currency, and the exposure (what those below zero in available
/// owe, as a positive sum, and how many they are). A stored row at zero with no holders
/// counts as absent (the aggregate does not report it).
async fn totals_drift(conn: &mut PgConnection) -> Result<Vec<TotalsDrift>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH recomputed AS (
               SELECT a.tenant_id, e.currency,
                      sum(e.available)::bigint AS available, sum(e.pending)::bigint AS pending,
                      sum(e.connect_reserved)::bigint AS connect_reserved,
                      sum(e.instant_available)::bigint AS instant_available,
                      count(*) AS holders,
                      COALESCE(sum(-e.available) FILTER (WHERE e.available < 0), 0)::bigint
                          AS negative,
                      count(*) FILTER (WHERE e.available < 0) AS negative_accounts
               FROM stripe_accounts a
               JOIN latest_balances l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
               CROSS JOIN LATERAL jsonb_to_recordset(l.amounts)
                   AS e(currency text, available bigint, pending bigint,
                        connect_reserved bigint, instant_available bigint)
               WHERE a.removed_at IS NULL
               GROUP BY a.tenant_id, e.currency
           ), compared AS (
               SELECT COALESCE(s.tenant_id, r.tenant_id) AS tenant_id,
                      COALESCE(s.currency, r.currency) AS currency,
                      COALESCE(s.available, 0) AS s_available, COALESCE(s.pending, 0) AS s_pending,
                      COALESCE(s.connect_reserved, 0) AS s_reserved,
                      COALESCE(s.instant_available, 0) AS s_instant,
                      COALESCE(s.holders, 0) AS s_holders,
                      COALESCE(s.negative, 0) AS s_negative,
                      COALESCE(s.negative_accounts, 0) AS s_negative_accounts,
                      COALESCE(r.available, 0) AS r_available, COALESCE(r.pending, 0) AS r_pending,
                      COALESCE(r.connect_reserved, 0) AS r_reserved,
                      COALESCE(r.instant_available, 0) AS r_instant,
                      COALESCE(r.holders, 0) AS r_holders,
                      COALESCE(r.negative, 0) AS r_negative,
                      COALESCE(r.negative_accounts, 0) AS r_negative_accounts
               FROM tenant_balance_totals s
               FULL JOIN recomputed r ON r.tenant_id = s.tenant_id AND r.currency = s.currency
           )
           SELECT c.tenant_id AS "tenant_id!", t.slug, c.currency AS "currency!",
                  c.s_available AS "s_available!", c.s_pending AS "s_pending!",
                  c.s_reserved AS "s_reserved!", c.s_instant AS "s_instant!",
                  c.s_holders AS "s_holders!", c.s_negative AS "s_negative!",
                  c.s_negative_accounts AS "s_negative_accounts!",
                  c.r_available AS "r_available!", c.r_pending AS "r_pending!",
                  c.r_reserved AS "r_reserved!", c.r_instant AS "r_instant!",
                  c.r_holders AS "r_holders!", c.r_negative AS "r_negative!",
                  c.r_negative_accounts AS "r_negative_accounts!"
           FROM compared c JOIN tenants t ON t.id = c.tenant_id
           WHERE (c.s_available, c.s_pending, c.s_reserved, c.s_instant, c.s_holders,
                  c.s_negative, c.s_negative_accounts)
                 IS DISTINCT FROM
                 (c.r_available, c.r_pending, c.r_reserved, c.r_instant, c.r_holders,
                  c.r_negative, c.r_negative_accounts)
           ORDER BY t.slug, c.currency"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TotalsDrift {
            tenant_id: r.tenant_id,
            tenant: r.slug,
            currency: r.currency,
            stored: CurrencyTotal {
                amounts: Amounts {
                    available: r.s_available,
                    pending: r.s_pending,
                    connect_reserved: r.s_reserved,
                    instant_available: r.s_instant,
                },
                holders: r.s_holders,
                exposure: Exposure {
                    negative: r.s_negative,
                    accounts: r.s_negative_accounts,
                },
            },
            recomputed: CurrencyTotal {
                amounts: Amounts {
                    available: r.r_available,
                    pending: r.r_pending,
                    connect_reserved: r.r_reserved,
                    instant_available: r.r_instant,
                },
                holders: r.r_holders,
                exposure: Exposure {
                    negative: r.r_negative,
                    accounts: r.r_negative_accounts,
                },
            },
        })
        .collect())
}

/// Per tenant: listed accounts whose latest try returned a balance (ok), and those
/// whose latest try failed (their last good amounts still count in the totals).
async fn counts_drift(conn: &mut PgConnection) -> Result<Vec<CountsDrift>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH recomputed AS (
               SELECT a.tenant_id, count(*) FILTER (WHERE l.ok) AS ok,
                      count(*) FILTER (WHERE NOT l.ok) AS failed
               FROM stripe_accounts a
               JOIN latest_balances l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
               WHERE a.removed_at IS NULL
               GROUP BY a.tenant_id
           )
           SELECT t.id AS tenant_id, t.slug,
                  COALESCE(s.ok, 0) AS "s_ok!", COALESCE(s.failed, 0) AS "s_failed!",
                  COALESCE(r.ok, 0) AS "r_ok!", COALESCE(r.failed, 0) AS "r_failed!"
           FROM tenants t
           LEFT JOIN tenant_balance_counts s ON s.tenant_id = t.id
           LEFT JOIN recomputed r ON r.tenant_id = t.id
           WHERE (COALESCE(s.ok, 0), COALESCE(s.failed, 0))
                 IS DISTINCT FROM (COALESCE(r.ok, 0), COALESCE(r.failed, 0))
           ORDER BY t.slug"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| CountsDrift {
            tenant_id: r.tenant_id,
            tenant: r.slug,
            stored: BalanceCounts {
                ok: r.s_ok,
                failed: r.s_failed,
            },
            recomputed: BalanceCounts {
                ok: r.r_ok,
                failed: r.r_failed,
            },
        })
        .collect())
}

/// Per tenant: accounts without `removed_at`.
async fn listed_drift(conn: &mut PgConnection) -> Result<Vec<ListedDrift>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH recomputed AS (
               SELECT tenant_id, count(*) AS listed FROM stripe_accounts
               WHERE removed_at IS NULL GROUP BY tenant_id
           )
           SELECT t.id AS tenant_id, t.slug,
                  COALESCE(s.listed, 0) AS "stored!", COALESCE(r.listed, 0) AS "recomputed!"
           FROM tenants t
           LEFT JOIN tenant_account_counts s ON s.tenant_id = t.id
           LEFT JOIN recomputed r ON r.tenant_id = t.id
           WHERE COALESCE(s.listed, 0) <> COALESCE(r.listed, 0)
           ORDER BY t.slug"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ListedDrift {
            tenant_id: r.tenant_id,
            tenant: r.slug,
            stored: r.stored,
            recomputed: r.recomputed,
        })
        .collect())
}

/// Sets every drifted counter to its recomputed value. Call in the transaction from
/// [`begin`] (with `repair`) that found the drift.
pub async fn repair(tx: &mut Transaction<'_, Postgres>, drift: &Drift) -> Result<(), sqlx::Error> {
    for row in &drift.totals {
        if row.recomputed == CurrencyTotal::default() {
            sqlx::query!(
                "DELETE FROM tenant_balance_totals WHERE tenant_id = $1 AND currency = $2",
                row.tenant_id,
                row.currency
            )
            .execute(&mut **tx)
            .await?;
            continue;
        }
        let amounts = row.recomputed.amounts;
        let exposure = row.recomputed.exposure;
        sqlx::query!(
            r#"INSERT INTO tenant_balance_totals
                   (tenant_id, currency, available, pending, connect_reserved, instant_available,
                    holders, negative, negative_accounts)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (tenant_id, currency) DO UPDATE SET
                   available = EXCLUDED.available, pending = EXCLUDED.pending,
                   connect_reserved = EXCLUDED.connect_reserved,
                   instant_available = EXCLUDED.instant_available, holders = EXCLUDED.holders,
                   negative = EXCLUDED.negative,
                   negative_accounts = EXCLUDED.negative_accounts"#,
            row.tenant_id,
            row.currency,
            amounts.available,
            amounts.pending,
            amounts.connect_reserved,
            amounts.instant_available,
            row.recomputed.holders,
            exposure.negative,
            exposure.accounts
        )
        .execute(&mut **tx)
        .await?;
    }
    for row in &drift.counts {
        sqlx::query!(
            r#"INSERT INTO tenant_balance_counts (tenant_id, ok, failed) VALUES ($1, $2, $3)
               ON CONFLICT (tenant_id) DO UPDATE SET ok = EXCLUDED.ok, failed = EXCLUDED.failed"#,
            row.tenant_id,
            row.recomputed.ok,
            row.recomputed.failed
        )
        .execute(&mut **tx)
        .await?;
    }
    for row in &drift.listed {
        sqlx::query!(
            r#"INSERT INTO tenant_account_counts (tenant_id, listed) VALUES ($1, $2)
               ON CONFLICT (tenant_id) DO UPDATE SET listed = EXCLUDED.listed"#,
            row.tenant_id,
            row.recomputed
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
