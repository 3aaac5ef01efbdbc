//! A real PgBouncer (Debian's) in transaction-pooling mode in front of the test
//! Postgres, started on a free port for one test and stopped when dropped; and the
//! settings that route a tally through it (`database.pgbouncer`, `migrate_url` direct).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tally::config::Settings;

use crate::helpers::{admin_url, free_port};
use crate::provision;

pub struct Bouncer {
    pub port: u16,
    process: Child,
    dir: tempfile::TempDir,
}

impl Bouncer {
    /// Starts PgBouncer in front of the Postgres of `admin_url()`, as `pool_mode =
    /// transaction` with the startup parameters the README names ignored.
    pub fn start() -> Bouncer {
        let [pgbouncer] = provision::ensure(&provision::PGBOUNCER)
            .try_into()
            .expect("one program");
        let postgres = url::Url::parse(&admin_url()).expect("TEST_DATABASE_URL is a URL");
        let user = match postgres.username() {
            "" => "postgres",
            user => user,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host={host} port={postgres_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 max_client_conn = 400\n\
                 default_pool_size = 20\n\
                 logfile = {log}\n",
                host = postgres.host_str().unwrap_or("127.0.0.1"),
                postgres_port = postgres.port().unwrap_or(5432),
                users = dir.path().join("users.txt").display(),
                log = dir.path().join("pgbouncer.log").display(),
            ),
        )
        .expect("write pgbouncer.ini");
        // With auth_type = trust the user must still be listed.
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n"))
            .expect("write users.txt");
        let mut command = Command::new(pgbouncer);
        // PgBouncer refuses to run as root: it runs as postgres, which must read its
        // directory.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            give_to_postgres(dir.path());
            command.args(["-u", "postgres"]);
        }
        let process = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        let mut bouncer = Bouncer { port, process, dir };
        bouncer.wait_until_listening();
        bouncer
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.process.try_wait() {
                panic!("pgbouncer exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// `direct` (a test database's URL) through this PgBouncer.
    pub fn url_for(&self, direct: &str) -> String {
        let mut url = url::Url::parse(direct).expect("a database URL");
        url.set_port(Some(self.port)).expect("a port");
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.into()
    }

    /// Points `settings` (made for a test database) at it, as the README says to run
    /// tally behind PgBouncer: `pgbouncer = true`, migrations over the direct URL.
    pub fn route(&self, settings: &mut Settings) {
        let direct = settings.database.url.expose_secret().to_owned();
        settings.database.url = SecretString::from(self.url_for(&direct));
        settings.database.pgbouncer = true;
        settings.database.migrate_url = Some(SecretString::from(direct));
    }
}

fn give_to_postgres(dir: &Path) {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam takes a NUL-terminated name; the entry is read at once, before
    // any other call could reuse its static storage.
    let (uid, gid) = unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        assert!(!entry.is_null(), "no postgres user to run pgbouncer as");
        ((*entry).pw_uid, (*entry).pw_gid)
    };
    for path in std::iter::once(dir.to_path_buf()).chain(
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| entry.expect("entry").path()),
    ) {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
