//! The deployment examples a platform copies (`deploy/`, the `Dockerfile`), checked as
//! far as this machine can: the systemd unit is verified by `systemd-analyze` against
//! the binary these tests built; the Kubernetes manifests are parsed and their facts
//! checked against tally's settings; the Dockerfile's image cannot be built here (no
//! Docker daemon), so what it copies must exist and its build must be the release
//! build the README gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::provision;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// `server.shutdown_grace_secs` as a production deployment gets it from the config
/// files (an example may set it again; then that value counts).
fn configured_grace_secs() -> u64 {
    tally::config::Settings::load_from(&repo().join("config"), "production")
        .expect("the production settings load")
        .server
        .shutdown_grace_secs
}

/// `KEY=value` lines of an environment file or unit section, comments skipped.
fn assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A `TALLY__SECTION__KEY` variable must name a setting of config/default.toml (set or
/// shown commented out there), or tally ignores it without a word.
fn assert_names_a_setting(variable: &str) {
    let Some(rest) = variable.strip_prefix("TALLY__") else {
        return;
    };
    let (section, key) = rest
        .to_lowercase()
        .split_once("__")
        .map(|(s, k)| (s.to_owned(), k.to_owned()))
        .unwrap_or_else(|| panic!("{variable}: not TALLY__SECTION__KEY"));
    let defaults = read("config/default.toml");
    let in_section = defaults
        .split("\n[")
        .find(|part| part.starts_with(&format!("{section}]")))
        .unwrap_or_else(|| panic!("{variable}: no [{section}] in config/default.toml"));
    assert!(
        in_section.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.strip_prefix(&key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        }),
        "{variable}: no {section}.{key} in config/default.toml"
    );
}

#[test]
fn the_systemd_unit_verifies_against_the_built_binary() {
    let unit = read("deploy/systemd/tally.service");
    let directives = assignments(&unit);
    let binary = "/usr/local/bin/tally";
    assert_eq!(
        value(&directives, "ExecStart"),
        Some(format!("{binary} serve").as_str())
    );
    assert_eq!(
        value(&directives, "ExecStartPre"),
        Some(format!("{binary} migrate").as_str()),
        "migrations run before the server starts"
    );
    for (key, expected) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("KillSignal", "SIGTERM"),
        ("EnvironmentFile", "/etc/tally/tally.env"),
        ("Environment", "TALLY_ENV=production"),
    ] {
        assert_eq!(value(&directives, key), Some(expected), "{key}");
    }

    let environment = assignments(&read("deploy/systemd/tally.env.example"));
    for (variable, _) in &environment {
        assert_names_a_setting(variable);
    }
    for needed in [
        "DATABASE_URL",
        "TALLY_MASTER_KEY",
        "TALLY__SERVER__METRICS_BIND",
    ] {
        assert!(
            value(&environment, needed).is_some(),
            "{needed} in the example"
        );
    }
    let grace = value(&environment, "TALLY__SERVER__SHUTDOWN_GRACE_SECS")
        .map_or_else(configured_grace_secs, |v| v.parse().expect("seconds"));
    let stop: u64 = value(&directives, "TimeoutStopSec")
        .expect("TimeoutStopSec")
        .parse()
        .expect("plain seconds");
    assert!(
        stop > grace,
        "systemd must wait longer ({stop} s) than tally's shutdown grace ({grace} s)"
    );

    // The unit as installed, but running the binary these tests built.
    let [analyze] = provision::ensure(&provision::SYSTEMD_ANALYZE)
        .try_into()
        .expect("one program");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tally.service");
    std::fs::write(&path, unit.replace(binary, env!("CARGO_BIN_EXE_tally"))).expect("write");
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Unknown keys and bad values are only warnings (exit 0): clean means silent.
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        output.status
    );
}

fn documents(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn of_kind(kind: &str) -> Yaml {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    let mut found: Vec<Yaml> = files
        .iter()
        .flat_map(|file| {
            documents(
                file.strip_prefix(repo())
                    .expect("in repo")
                    .to_str()
                    .expect("utf-8"),
            )
        })
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes");
    found.remove(0)
}

fn env_of(container: &Yaml) -> Vec<&Yaml> {
    container["env"].as_vec().expect("env").iter().collect()
}

fn env_value<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    env_of(container)
        .into_iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
}

fn port_of(bind: &str) -> i64 {
    bind.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{bind}: no port"))
}

fn container_port(container: &Yaml, name: &str) -> i64 {
    container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

/// The Secret key a variable is read from, if it is read from one.
fn secret_ref(container: &Yaml, name: &str) -> Option<(String, String)> {
    env_of(container)
        .into_iter()
        .find(|e| e["name"].as_str() == Some(name))
        .map(|e| &e["valueFrom"]["secretKeyRef"])
        .and_then(|r| {
            Some((
                r["name"].as_str()?.to_owned(),
                r["key"].as_str()?.to_owned(),
            ))
        })
}

#[test]
fn the_kubernetes_manifests_run_three_ready_replicas_that_stop_in_time() {
    let deployment = of_kind("Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_i64(), Some(3));
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0].as_str(), Some("serve"));
    for (name, _) in env_of(container)
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, ())))
    {
        assert_names_a_setting(name);
    }

    let http = container_port(container, "http");
    assert_eq!(
        port_of(env_value(container, "TALLY__SERVER__BIND").expect("server.bind")),
        http
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("http"), "{probe}");
    }

    // Metrics on server.metrics_bind, where the scrape annotation says.
    let metrics = container_port(container, "metrics");
    assert_eq!(
        port_of(env_value(container, "TALLY__SERVER__METRICS_BIND").expect("metrics_bind")),
        metrics
    );
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(metrics.to_string().as_str())
    );

    // SIGTERM, the preStop pause, then tally's grace: all before the kubelet kills.
    let grace = env_value(container, "TALLY__SERVER__SHUTDOWN_GRACE_SECS")
        .map_or_else(configured_grace_secs, |v| v.parse().expect("seconds"));
    let pause: i64 = match &container["lifecycle"]["preStop"]["exec"]["command"] {
        Yaml::Array(command) if command[0].as_str() == Some("sleep") => command[1]
            .as_str()
            .expect("seconds")
            .parse()
            .expect("seconds"),
        Yaml::BadValue => 0,
        other => panic!("preStop: {other:?}"),
    };
    let termination = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > pause + i64::try_from(grace).expect("small"),
        "terminationGracePeriodSeconds {termination} must exceed the preStop pause {pause} + server.shutdown_grace_secs {grace}"
    );

    // The master key and the database from the Secret, never written in the manifest.
    let secret = of_kind("Secret");
    for variable in ["TALLY_MASTER_KEY", "DATABASE_URL"] {
        let (name, key) = secret_ref(container, variable)
            .unwrap_or_else(|| panic!("{variable} comes from a Secret"));
        assert_eq!(secret["metadata"]["name"].as_str(), Some(name.as_str()));
        assert!(
            !secret["stringData"][key.as_str()].is_badvalue(),
            "{variable}: the Secret has {key}"
        );
    }

    // Migrations run by a Job with the same image and database before a rollout.
    let job = of_kind("Job");
    let migrate = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(migrate["args"][0].as_str(), Some("migrate"));
    assert_eq!(migrate["image"], container["image"]);
    assert_eq!(
        secret_ref(migrate, "DATABASE_URL"),
        secret_ref(container, "DATABASE_URL")
    );

    // The Service reaches exactly the Deployment's pods.
    let service = of_kind("Service");
    assert_eq!(
        service["spec"]["selector"],
        spec["template"]["metadata"]["labels"]
    );
}

/// The release build, as the README gives it and the Dockerfile runs it.
const RELEASE_BUILD: &str = "cargo build --release --locked --bin tally";

#[test]
fn the_dockerfile_copies_what_exists_and_runs_the_release_build() {
    let dockerfile = read("Dockerfile");
    assert!(
        read("README.md").contains(RELEASE_BUILD),
        "the README gives the release build"
    );
    let runs: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("RUN "))
        .filter(|run| run.contains("cargo build"))
        .collect();
    assert_eq!(runs, [RELEASE_BUILD], "the Dockerfile's build");
    assert!(
        dockerfile.contains("ENV SQLX_OFFLINE=true"),
        "no database at build time"
    );

    // Every path copied from the build context exists; what the build stage copies
    // covers every file Cargo.toml names (bench targets included).
    let mut copied = Vec::new();
    let mut stage = 0;
    for line in dockerfile.lines().map(str::trim) {
        if line.starts_with("FROM ") {
            stage += 1;
        }
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from=") {
            continue;
        }
        let paths: Vec<&str> = args.split_whitespace().collect();
        let (sources, _destination) = paths.split_at(paths.len() - 1);
        for source in sources {
            assert!(
                repo().join(source).exists(),
                "the Dockerfile copies {source}, which is not in the repository"
            );
            copied.push((stage, source.trim_end_matches('/').to_owned()));
        }
    }
    let built_from = |path: &str| {
        copied.iter().any(|(s, source)| {
            *s == 1 && (path == source || path.starts_with(&format!("{source}/")))
        })
    };
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        ".sqlx",
        "migrations",
        "src/main.rs",
    ] {
        assert!(built_from(needed), "the build stage copies {needed}");
    }
    for line in read("Cargo.toml").lines() {
        if let Some(path) = line.trim().strip_prefix("path = ") {
            let path = path.trim_matches('"');
            assert!(
                built_from(path),
                "the build stage copies {path} (Cargo.toml names it)"
            );
        }
    }

    // The runtime stage: the binary the build made, and the config its TALLY_ENV reads.
    assert!(dockerfile.contains("COPY --from=build /src/target/release/tally /usr/local/bin/tally"));
    assert!(dockerfile.contains("WORKDIR /src"));
    let environment = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("ENV TALLY_ENV="))
        .expect("the image sets TALLY_ENV");
    assert!(copied
        .iter()
        .any(|(s, source)| *s == 2 && source == "config"));
    assert!(
        repo().join(format!("config/{environment}.toml")).is_file(),
        "config/{environment}.toml"
    );

    // What .dockerignore leaves out is never something copied.
    if let Ok(ignored) = std::fs::read_to_string(repo().join(".dockerignore")) {
        for pattern in ignored
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let pattern = pattern.trim_matches('/');
            assert!(
                !copied.iter().any(|(_, source)| source == pattern),
                ".dockerignore leaves out {pattern}, which the Dockerfile copies"
            );
        }
    }
}
