//! `tally doctor [--repair]`: counters corrupted behind tally's back are found,
//! reported stored vs recomputed, repaired in one go, and then agree.

use std::process::{Command, Output};

use crate::balances::{platform_setup, reported_totals, BALANCES};
use crate::helpers::TestApp;

/// Runs `tally doctor` against the app's database, off the test's runtime thread.
pub async fn doctor(app: &TestApp, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .arg("doctor")
        .args(args)
        .env("DATABASE_URL", &app.db.url)
        .env(
            "TALLY_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        );
    tokio::task::spawn_blocking(move || command.output().expect("tally doctor runs"))
        .await
        .expect("joined")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn doctor_reports_drift_repairs_it_and_then_finds_none() {
    let (app, sim, ids, token) = platform_setup(8).await;
    sim.revoke(&ids[0]);
    let (status, fetched) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(status, 200, "{fetched}");
    let right = reported_totals(&fetched);
    assert_eq!(
        (
            fetched["accounts"]["ok"].as_i64(),
            fetched["accounts"]["failed"].as_i64()
        ),
        (Some(7), Some(1))
    );
    let untouched = doctor(&app, &[]).await;
    assert!(untouched.status.success(), "{}", stdout(&untouched));
    assert!(stdout(&untouched).contains("no drift"));

    // Rows changed outside tally: one currency off, one missing, one invented, the
    // ok/failed counts and the listed count wrong.
    let dropped: String = sqlx::query_scalar(
        "SELECT max(currency) FROM tenant_balance_totals WHERE currency <> 'usd'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("a second currency");
    sqlx::raw_sql(&format!(
        "UPDATE tenant_balance_totals SET available = available + 999, holders = holders + 1
             WHERE currency = 'usd';
         DELETE FROM tenant_balance_totals WHERE currency = '{dropped}';
         INSERT INTO tenant_balance_totals (tenant_id, currency, available, holders)
             SELECT id, 'xts', 5, 1 FROM tenants;
         UPDATE tenant_balance_counts SET ok = ok + 2, failed = 0;
         UPDATE tenant_account_counts SET listed = listed + 3;"
    ))
    .execute(&app.pool)
    .await
    .expect("corrupted");
    let (_, corrupted) = app.get_json(BALANCES, &token).await;
    assert_ne!(reported_totals(&corrupted), right, "the corruption shows");

    let check = doctor(&app, &[]).await;
    let report = stdout(&check);
    assert!(!check.status.success(), "drift left alone exits non-zero");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("5 per-tenant counters drifted"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let usd = report
        .lines()
        .find(|line| line.starts_with("tenant acme totals usd:"))
        .unwrap_or_else(|| panic!("usd reported: {report}"));
    let (stored, recomputed) = usd.split_once("; recomputed ").expect("both sides");
    let available = |side: &str| -> i64 {
        let rest = side.split("available ").nth(1).expect("available");
        rest.split(' ')
            .next()
            .expect("a number")
            .parse()
            .expect("an integer")
    };
    assert_eq!(available(stored) - available(recomputed), 999, "{usd}");
    assert_eq!(available(recomputed), right["usd"][0], "{usd}");
    for expected in [
        format!("tenant acme totals {dropped}: stored available 0 pending 0"),
        "tenant acme totals xts: stored available 5".to_owned(),
        "tenant acme balance counts: stored ok 9 failed 0; recomputed ok 7 failed 1".to_owned(),
        "tenant acme listed accounts: stored 11; recomputed 8".to_owned(),
    ] {
        assert!(report.contains(&expected), "{expected} in: {report}");
    }

    let repair = doctor(&app, &["--repair"]).await;
    assert!(repair.status.success(), "{}", stdout(&repair));
    assert!(stdout(&repair).contains("5 drifted counters repaired"));
    let (status, repaired) = app.get_json(BALANCES, &token).await;
    assert_eq!(status, 200);
    assert_eq!(reported_totals(&repaired), right);
    assert_eq!(repaired["accounts"], fetched["accounts"]);

    let again = doctor(&app, &[]).await;
    assert!(again.status.success(), "{}", stdout(&again));
    assert!(stdout(&again).contains("no drift"), "{}", stdout(&again));
}
