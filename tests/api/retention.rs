//! Retention: a pruning pass frees the rows that grow with time and keeps every row an
//! answer still needs. Time is driven by placing rows in the past, not by waiting.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};
use tally::close::compute::{bring_up_to_date, CloseRules};
use tally::config::Settings;
use tally::domain::Role;
use tally::store;
use tokio_util::sync::CancellationToken;

use crate::doctor::{doctor, stdout};
use crate::helpers::{spawn_app, TestApp};
use crate::totals::{rebuild_history, Driver};

const TOTALS: &str = "/api/administrator/connect/balances/totals";
const BALANCES: &str = "/api/administrator/connect/balances";

/// A stored balance in Stripe's shape: `usd` available.
fn balance(usd: i64) -> Value {
    json!({
        "object": "balance", "livemode": false,
        "available": [{"amount": usd, "currency": "usd", "source_types": {"card": usd}}],
        "pending": [{"amount": 0, "currency": "usd"}],
    })
}

/// The app's settings with pruning as shipped (the test config turns it off).
fn shipped(app: &TestApp) -> Settings {
    let mut settings = app.settings.clone();
    settings.retention.enabled = true;
    settings
}

async fn prune(app: &TestApp, settings: &Settings) -> tally::retention::Pass {
    tally::retention::pass(&app.pool, &settings.retention, &CancellationToken::new())
        .await
        .expect("a pruning pass")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Snapshot ids `latest_balances` points to (latest tries and last good balances).
async fn pointed_to(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT id FROM (SELECT snapshot_id AS id FROM latest_balances
                         UNION SELECT good_snapshot_id FROM latest_balances) p
         WHERE id IS NOT NULL ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("pointers")
}

async fn existing(app: &TestApp, ids: &[i64]) -> usize {
    let found: i64 =
        sqlx::query_scalar("SELECT count(*) FROM balance_snapshots WHERE id = ANY($1)")
            .bind(ids)
            .fetch_one(&app.pool)
            .await
            .expect("count");
    usize::try_from(found).expect("a count")
}

/// Per day start in `starts`, the snapshot the close would check each account against.
async fn checkpoints(
    app: &TestApp,
    tenant_id: i64,
    starts: &[DateTime<Utc>],
) -> Vec<(DateTime<Utc>, String, i64)> {
    let mut out = Vec::new();
    for start in starts {
        let found =
            store::ledger::first_checkpoints(&app.pool, tenant_id, *start - TimeDelta::seconds(1))
                .await
                .expect("checkpoints");
        out.extend(
            found
                .into_iter()
                .map(|c| (*start, c.stripeid, c.snapshot_id)),
        );
    }
    out.sort();
    out
}

fn midnight(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::days(1)).expect("a day")
}

#[tokio::test]
async fn snapshots_thin_to_one_a_day_and_every_answer_stays_the_same() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let now = Utc::now()
        .duration_trunc(TimeDelta::minutes(30))
        .expect("now");
    let start = now - TimeDelta::days(5);
    let mut driver = Driver::new(&app, tenant_id).await;
    driver
        .list(
            start,
            &[("acct_1A", None), ("acct_1B", None), ("acct_1C", None)],
        )
        .await;
    // Every 30 minutes for 5 days: A and C answer a growing balance; B fails from 3
    // days ago on, so its last good balance is old.
    let mut at = start + TimeDelta::minutes(30);
    let mut step = 0;
    while at < now {
        step += 1;
        driver.good("acct_1A", at, balance(step)).await;
        driver
            .good("acct_1C", at + TimeDelta::seconds(7), balance(1000 + step))
            .await;
        if at < now - TimeDelta::days(3) {
            driver.good("acct_1B", at, balance(500 + step)).await;
        } else {
            driver.failed("acct_1B", at).await;
        }
        at += TimeDelta::minutes(30);
    }
    // A's ledger is read: Stripe answered each balance at its fetch, and a transaction
    // shares the second of the first balance of one day (so the next one checks it).
    sqlx::query("UPDATE balance_snapshots SET stripe_at = fetched_at WHERE stripeid = 'acct_1A'")
        .execute(&app.pool)
        .await
        .expect("answered at");
    sqlx::query(
        "INSERT INTO ledger_reads (tenant_id, stripeid, complete_from, complete_to)
         VALUES ($1, 'acct_1A', $2, $3)",
    )
    .bind(tenant_id)
    .bind(start)
    .bind(now)
    .execute(&app.pool)
    .await
    .expect("ledger read");
    let shared = midnight(now - TimeDelta::days(2)) + TimeDelta::minutes(30);
    sqlx::query(
        "INSERT INTO balance_transactions (tenant_id, id, stripeid, type, reporting_category,
                                           amount, fee, net, currency, created, available_on, status)
         VALUES ($1, 'txn_1', 'acct_1A', 'charge', 'charge', 0, 0, 0, 'usd', $2, $2, 'available')",
    )
    .bind(tenant_id)
    .bind(shared)
    .execute(&app.pool)
    .await
    .expect("transaction");

    let day_starts: Vec<_> = (0..5)
        .map(|d| midnight(start) + TimeDelta::days(d + 1))
        .collect();
    let from = midnight(start).format("%Y-%m-%d");
    let daily = format!(
        "{TOTALS}?interval=day&from={from}&to={}",
        now.format("%Y-%m-%d")
    );
    let hourly = format!(
        "{TOTALS}?interval=hour&from={}&to={}",
        (now - TimeDelta::hours(20)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (_, daily_before) = app.get_json(&daily, &token).await;
    let (_, hourly_before) = app.get_json(&hourly, &token).await;
    let (status, aggregate_before) = app.get_json(BALANCES, &token).await;
    assert_eq!(status, 200, "{aggregate_before}");
    let checkpoints_before = checkpoints(&app, tenant_id, &day_starts).await;
    assert!(
        checkpoints_before
            .iter()
            .any(|(at, _, _)| *at == midnight(shared)),
        "the close has a checkpoint after the shared second"
    );
    let pointers = pointed_to(&app).await;
    let total_before = count(&app, "SELECT count(*) FROM balance_snapshots").await;
    let recent = format!(
        "SELECT count(*) FROM balance_snapshots WHERE fetched_at > '{}'",
        (now - TimeDelta::hours(23)).to_rfc3339()
    );
    let recent_before = count(&app, &recent).await;

    let pass = prune(&app, &shipped(&app)).await;

    let total_after = count(&app, "SELECT count(*) FROM balance_snapshots").await;
    assert!(
        total_after * 4 < total_before,
        "a day of every snapshot and one a day before it: {total_after} of {total_before} kept ({pass:?})"
    );
    assert_eq!(
        count(&app, &recent).await,
        recent_before,
        "the last day is kept whole"
    );
    assert_eq!(
        existing(&app, &pointers).await,
        pointers.len(),
        "latest and last good snapshots are kept"
    );
    // C has no ledger: older than a day, at most one balance per UTC day (and the
    // latest before the horizon) is left.
    let c_old = count(
        &app,
        &format!(
            "SELECT count(*) FROM balance_snapshots WHERE stripeid = 'acct_1C' AND fetched_at < '{}'",
            (now - TimeDelta::days(1)).to_rfc3339()
        ),
    )
    .await;
    assert!(c_old <= 7, "one a day: {c_old}");
    assert_eq!(
        checkpoints(&app, tenant_id, &day_starts).await,
        checkpoints_before,
        "each day's close checkpoint is kept"
    );
    assert_eq!(app.get_json(&daily, &token).await.1, daily_before);
    assert_eq!(app.get_json(&hourly, &token).await.1, hourly_before);
    assert_eq!(
        app.get_json(BALANCES, &token).await.1["totals"],
        aggregate_before["totals"]
    );
    // The totals over time recomputed from what is left answer every day the same.
    rebuild_history(&app, tenant_id).await;
    assert_eq!(app.get_json(&daily, &token).await.1, daily_before);
    assert_eq!(app.get_json(&hourly, &token).await.1, hourly_before);

    // A second pass finds nothing more.
    let again = prune(&app, &shipped(&app)).await;
    assert_eq!(
        again.deleted.get("balance_snapshots").copied().unwrap_or(0),
        0,
        "{again:?}"
    );
}

/// A day's close for one account: a charge of 100 at noon every day, and balances
/// answered every 6 hours that hold them.
#[tokio::test]
async fn final_days_keep_their_close_open_days_recompute_the_same_and_old_ones_go() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let today = midnight(Utc::now());
    let start = today - TimeDelta::days(10);
    let mut driver = Driver::new(&app, tenant_id).await;
    driver.list(start, &[("acct_1A", None)]).await;
    let mut at = start;
    let mut held = 1000;
    while at < Utc::now() - TimeDelta::minutes(5) {
        if at.format("%H").to_string() == "12" {
            held += 100;
            sqlx::query(
                "INSERT INTO balance_transactions (tenant_id, id, stripeid, type, reporting_category,
                     amount, fee, net, currency, created, available_on, status)
                 VALUES ($1, $2, 'acct_1A', 'charge', 'charge', 100, 0, 100, 'usd', $3, $3, 'available')",
            )
            .bind(tenant_id)
            .bind(format!("txn_{}", at.timestamp()))
            .bind(at)
            .execute(&app.pool)
            .await
            .expect("transaction");
        }
        driver.good("acct_1A", at, balance(held)).await;
        at += TimeDelta::hours(6);
    }
    sqlx::query("UPDATE balance_snapshots SET stripe_at = fetched_at")
        .execute(&app.pool)
        .await
        .expect("answered at");
    sqlx::query(
        "INSERT INTO ledger_reads (tenant_id, stripeid, complete_from, complete_to)
         VALUES ($1, 'acct_1A', $2, now())",
    )
    .bind(tenant_id)
    .bind(start)
    .execute(&app.pool)
    .await
    .expect("ledger read");

    let mut settings = shipped(&app);
    settings.retention.ledger_days = 3;
    settings.retention.closes_days = 6;
    // The days were closed before any was final (as a deployment that ran all along).
    let rules = CloseRules {
        settle: TimeDelta::zero(),
        settlement_days: 1,
        final_after_days: None,
    };
    let tenant = store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("tenant")
        .expect("tenant");
    bring_up_to_date(&app.pool, &tenant, rules)
        .await
        .expect("closed");
    let rules = CloseRules {
        final_after_days: Some(3),
        ..rules
    };
    let days: Vec<String> = (1..=9)
        .map(|d| (today - TimeDelta::days(d)).format("%Y-%m-%d").to_string())
        .collect();
    let mut before = BTreeMap::new();
    for day in &days {
        let (status, body) = day_answer(&app, &token, day).await;
        assert_eq!(status, 200, "{day}: {body}");
        assert_eq!(
            body["currencies"][0]["matched"],
            json!(1),
            "{day} ties out: {body}"
        );
        before.insert(day.clone(), body);
    }
    let transactions_before = count(&app, "SELECT count(*) FROM balance_transactions").await;
    let day_starts: Vec<_> = (0..=4).map(|d| today - TimeDelta::days(d)).collect();
    let checkpoints_before = checkpoints(&app, tenant_id, &day_starts).await;

    let pass = prune(&app, &settings).await;

    let transactions_after = count(&app, "SELECT count(*) FROM balance_transactions").await;
    assert!(
        transactions_after < transactions_before && transactions_after >= 4,
        "final days' transactions go, open days' stay: {transactions_after} of {transactions_before} ({pass:?})"
    );
    assert_eq!(
        checkpoints(&app, tenant_id, &day_starts).await,
        checkpoints_before,
        "open days' checkpoints are kept"
    );
    // The closer recomputes open days from what is left, and leaves final ones alone.
    bring_up_to_date(&app.pool, &tenant, rules)
        .await
        .expect("closed");
    for (index, day) in days.iter().enumerate() {
        let (status, body) = day_answer(&app, &token, day).await;
        if index + 1 > 6 {
            assert_eq!(status, 404, "{day} is older than closes_days: {body}");
            assert_eq!(body["code"], json!("close-not-ready"));
        } else {
            assert_eq!(status, 200, "{day}: {body}");
            assert_eq!(body["currencies"], before[day]["currencies"], "{day}");
            assert_eq!(body["differences"], before[day]["differences"], "{day}");
        }
    }
}

async fn day_answer(app: &TestApp, token: &str, day: &str) -> (u16, Value) {
    app.get_json(
        &format!("/api/administrator/connect/balances/close?date={day}"),
        token,
    )
    .await
}

#[tokio::test]
async fn age_pruned_tables_keep_their_minimums_and_running_work_and_doctor_counts_them() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    for (id, age_days) in [("evt_old", 8), ("evt_recent", 2)] {
        sqlx::query(
            "INSERT INTO webhook_events (tenant_id, event_id, event_type, received_at)
             VALUES ($1, $2, 'account.updated', now() - make_interval(days => $3))",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(age_days)
        .execute(&app.pool)
        .await
        .expect("event");
    }
    for (action, age_days) in [("old", 401), ("kept", 399)] {
        sqlx::query(
            "INSERT INTO audit_events (at, actor_kind, action, tenant_slug)
             VALUES (now() - make_interval(days => $1), 'cli', $2, 'acme')",
        )
        .bind(age_days)
        .bind(action)
        .execute(&app.pool)
        .await
        .expect("audit");
    }
    // Another tenant's only sync is as old, but it is that tenant's latest: the admin
    // page's "last sync" and the re-sync schedule read it.
    let quiet = app.add_tenant("quiet").await;
    sqlx::query(
        "INSERT INTO sync_runs (id, tenant_id, status, started_at)
         VALUES (gen_random_uuid(), $1, 'succeeded', now() - make_interval(days => 40))",
    )
    .bind(quiet)
    .execute(&app.pool)
    .await
    .expect("quiet tenant's sync run");
    for (status, age_days) in [("succeeded", 40), ("running", 40), ("failed", 2)] {
        sqlx::query(
            "INSERT INTO sync_runs (id, tenant_id, status, started_at)
             VALUES (gen_random_uuid(), $1, $2, now() - make_interval(days => $3))",
        )
        .bind(tenant_id)
        .bind(status)
        .bind(age_days)
        .execute(&app.pool)
        .await
        .expect("sync run");
    }

    // (A running refresh is the refresher's to end, whatever its age.)
    for age_days in [40, 2] {
        sqlx::query(
            "INSERT INTO balance_refreshes (id, tenant_id, scope_key, cutoff, trigger, status,
                                            total, started_at, finished_at)
             VALUES (gen_random_uuid(), $1, '', now(), 'poll', 'succeeded', 0,
                     now() - make_interval(days => $2), now() - make_interval(days => $2))",
        )
        .bind(tenant_id)
        .bind(age_days)
        .execute(&app.pool)
        .await
        .expect("refresh");
    }

    let report = doctor(&app, &[]).await;
    let text = stdout(&report);
    assert!(report.status.success(), "{text}");
    for (table, prunable) in [
        ("webhook_events", 1),
        ("audit_events", 1),
        ("sync_runs", 1),
        ("balance_refreshes", 1),
        ("balance_snapshots", 0),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{table} ")))
            .unwrap_or_else(|| panic!("doctor reports {table}: {text}"));
        assert!(
            line.contains(&format!("prunable {prunable} rows")),
            "{table}: {line}"
        );
    }

    prune(&app, &shipped(&app)).await;
    let left = |sql: &'static str| count(&app, sql);
    assert_eq!(
        left("SELECT count(*) FROM webhook_events WHERE event_id = 'evt_old'").await,
        0
    );
    assert_eq!(
        left("SELECT count(*) FROM webhook_events WHERE event_id = 'evt_recent'").await,
        1
    );
    assert_eq!(
        left("SELECT count(*) FROM audit_events WHERE action = 'old'").await,
        0
    );
    assert_eq!(
        left("SELECT count(*) FROM audit_events WHERE action = 'kept'").await,
        1
    );
    assert_eq!(
        left("SELECT count(*) FROM sync_runs").await,
        3,
        "the running, the recent and the quiet tenant's latest stay"
    );
    let quiet_kept: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE tenant_id = $1")
        .bind(quiet)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(quiet_kept, 1, "a tenant's latest sync is kept however old");
    assert_eq!(
        left("SELECT count(*) FROM sync_runs WHERE status = 'running'").await,
        1
    );
    assert_eq!(left("SELECT count(*) FROM balance_refreshes").await, 1);

    // The floors hold in the SQL too, whatever reaches it: asked to prune after 1 day,
    // the 2-day-old event id stays (Stripe retries for 3), and asked to prune the audit
    // after 30 days, the 399-day-old entry stays (the 400-day minimum).
    let mut conn = app.pool.acquire().await.expect("connection");
    tally::store::retention::prune_webhook_events(&mut conn, 1, 1000)
        .await
        .expect("prune event ids");
    tally::store::retention::prune_audit(&mut conn, 30, 1000)
        .await
        .expect("prune audit");
    drop(conn);
    assert_eq!(
        left("SELECT count(*) FROM webhook_events WHERE event_id = 'evt_recent'").await,
        1
    );
    assert_eq!(
        left("SELECT count(*) FROM audit_events WHERE action = 'kept'").await,
        1
    );

    let after = doctor(&app, &[]).await;
    let text = stdout(&after);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("webhook_events "))
        .expect("webhook_events reported");
    assert!(line.contains("prunable 0 rows"), "{line}");
}

#[tokio::test]
async fn replicas_take_turns_a_table_held_by_another_is_left_to_it() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    sqlx::query(
        "INSERT INTO webhook_events (tenant_id, event_id, event_type, received_at)
         VALUES ($1, 'evt_old', 'account.updated', now() - interval '30 days')",
    )
    .bind(tenant_id)
    .execute(&app.pool)
    .await
    .expect("event");
    // Another replica is pruning webhook events: it holds the table's turn.
    let mut other = app.pool.begin().await.expect("begin");
    assert!(
        store::retention::take_turn(&mut other, store::retention::Table::WebhookEvents, 1000)
            .await
            .expect("turn")
    );
    let pass = prune(&app, &shipped(&app)).await;
    assert!(pass.skipped.contains(&"webhook_events"), "{pass:?}");
    assert_eq!(count(&app, "SELECT count(*) FROM webhook_events").await, 1);
    other.rollback().await.expect("rollback");
    prune(&app, &shipped(&app)).await;
    assert_eq!(count(&app, "SELECT count(*) FROM webhook_events").await, 0);
}
