//! Programs a test needs from Debian's packages (Chromium and its WebDriver, systemd's
//! `systemd-analyze`, PgBouncer): installed by the test itself when they are missing and the
//! machine allows it (root, with `apt-get`), so `cargo test` is the whole set-up;
//! anywhere else the test fails saying exactly what to run. Never skipped silently.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, PoisonError};

/// What a test needs: these programs on `PATH`, from these Debian packages.
pub struct Needs {
    pub programs: &'static [&'static str],
    pub packages: &'static [&'static str],
    /// Says what for, in the failure message.
    pub what_for: &'static str,
}

pub const BROWSER: Needs = Needs {
    programs: &["chromium", "chromedriver"],
    packages: &["chromium", "chromium-driver"],
    what_for: "the browser tests drive Debian's Chromium through its WebDriver",
};

pub const SYSTEMD_ANALYZE: Needs = Needs {
    programs: &["systemd-analyze"],
    packages: &["systemd"],
    what_for: "the deployment test runs systemd-analyze verify on deploy/systemd/tally.service",
};

pub const PGBOUNCER: Needs = Needs {
    programs: &["pgbouncer"],
    packages: &["pgbouncer"],
    what_for: "the PgBouncer tests run tally behind Debian's PgBouncer in transaction-pooling mode",
};

pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// One outcome per package set for this test binary: the tests that need the same
/// packages wait for the first one's install instead of running apt again, and a
/// failed install is reported to each of them without being retried.
static INSTALLS: Mutex<BTreeMap<&'static str, Result<(), String>>> = Mutex::new(BTreeMap::new());

/// The path of each program in `needs`, installing their packages first when one is
/// missing and this process may (root, `apt-get` on `PATH`). Panics saying what to run
/// otherwise, or what apt said.
pub fn ensure(needs: &Needs) -> Vec<PathBuf> {
    if let Some(found) = all_found(needs) {
        return found;
    }
    let mut installs = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
    let key = needs.packages[0];
    if !installs.contains_key(key) {
        let outcome = install(needs);
        installs.insert(key, outcome);
    }
    if let Err(message) = &installs[key] {
        panic!("{message}");
    }
    drop(installs);
    all_found(needs).unwrap_or_else(|| {
        panic!(
            "{} installed, but {} still not on PATH; {}",
            needs.packages.join(" "),
            needs.programs.join(", "),
            command(needs)
        )
    })
}

fn all_found(needs: &Needs) -> Option<Vec<PathBuf>> {
    needs
        .programs
        .iter()
        .map(|name| find_program(name))
        .collect()
}

fn command(needs: &Needs) -> String {
    format!(
        "{}: run `apt-get update && apt-get install -y {}` as root",
        needs.what_for,
        needs.packages.join(" ")
    )
}

fn install(needs: &Needs) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || find_program("apt-get").is_none() {
        return Err(format!(
            "{} is missing and this test can only install it as root with apt-get; {}",
            needs.programs.join(" or "),
            command(needs)
        ));
    }
    // Across processes too (two `cargo test` runs, CI beside a developer): apt takes
    // its own lock and would refuse the second one rather than wait.
    let _lock = lock_file().map_err(|error| format!("{error}; {}", command(needs)))?;
    if all_found(needs).is_some() {
        return Ok(());
    }
    // Written to the terminal itself, past the test harness's capture: one line.
    let _ = writeln!(
        std::io::stderr(),
        "tests: installing {} from Debian's packages (apt-get update, apt-get install -y {}): {}",
        needs.packages.join(" and "),
        needs.packages.join(" "),
        needs.what_for
    );
    apt(&["update", "-q"], needs)?;
    let mut install = vec!["install", "-y", "-q"];
    install.extend_from_slice(needs.packages);
    apt(&install, needs)
}

fn apt(args: &[&str], needs: &Needs) -> Result<(), String> {
    let output = Command::new("apt-get")
        // Wait for another apt (a person's, another project's test) instead of failing.
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|error| format!("apt-get did not start ({error}); {}", command(needs)))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = said.lines().rev().take(5).collect();
    Err(format!(
        "`apt-get {}` failed ({}): {}; {}",
        args.join(" "),
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        command(needs)
    ))
}

/// An exclusive lock on a file every test process agrees on, held until dropped.
fn lock_file() -> Result<File, String> {
    let path = std::env::temp_dir().join("tally-tests-apt.lock");
    let file = File::create(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    // SAFETY: the descriptor is open for as long as `file` lives; the lock goes with it.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "could not lock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}
