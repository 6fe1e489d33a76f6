//! A throwaway PostgreSQL server for duet's tests, examples and benchmarks.
//!
//! Std-only on purpose (but for [`crate::tls`]'s certificates, made with
//! `rcgen`): it must build before (and independently of) the driver it is
//! used to test, and it must not drag dependencies into every test binary.
//!
//! Which PostgreSQL: `DUET_PG` picks the major version of every server the
//! harness starts (shared, fresh, TLS, replica): `15` or unset, Debian's
//! (`pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`);
//! `18`, the one `scripts/install-pg18` put in `$DUET_PG18_DIR` (default
//! `/opt/duet-postgresql-18`), an error if it is not there. Both are built
//! with OpenSSL, so every server can be a TLS one. `psql` comes from the
//! same install as the server (18's own psql with `DUET_PG=18`, which knows
//! `sslnegotiation=direct`).
//!
//! Besides the shared server: [`TestServer::start_tls`] /
//! [`TestServer::shared_tls`] (a server with `ssl=on` and the roles of
//! [`crate::tls`]), and [`TestServer::start_replica`] /
//! [`TestServer::shared_replica`] (a streaming hot standby, which
//! [`TestServer::promote`] turns into a primary).
//!
//! Two modes:
//!
//! * `DATABASE_URL` set (a `postgres://` URL or a libpq `key=value` string):
//!   that server is used as is. No process is started; the harness only tries
//!   to create its auth roles there with `psql` (see "Roles on a
//!   `DATABASE_URL` server" below). Its password never appears in a message,
//!   panic or `Debug` output of the harness.
//! * otherwise: `initdb` a cluster in a fresh temp dir, start it with
//!   `pg_ctl` on a free port (TCP on 127.0.0.1 plus a private Unix socket
//!   directory), with one role per authentication method and a `pg_hba.conf`
//!   that makes each of those roles use its method.
//!
//! Cleanup: [`TestServer`]'s `Drop` stops the cluster and removes its
//! directory. Because [`TestServer::shared`] keeps its server in a static
//! (whose `Drop` never runs), every harness-started cluster also gets a
//! detached watchdog shell. It blocks reading a pipe whose only write end
//! lives in the test process; when that process ends for any reason (normal
//! exit, panic, `SIGKILL`) the kernel closes the pipe and the watchdog stops
//! the cluster and deletes the directory. Its stdio never points at the test
//! process's stdout, so `cargo test` does not wait for it.
//!
//! # Roles on a `DATABASE_URL` server
//!
//! The auth roles keep fixed names (`duet_trust`, `duet_clear`, `duet_md5`,
//! `duet_scram`): only that server's own `pg_hba.conf`, which the harness
//! cannot edit, can give each of them its authentication method, so it must
//! name them, and names unique to each process could never match it. What the
//! harness can promise instead: it drops only roles it created itself (that
//! did not exist when it attached), and only when the last [`TestServer`] of
//! this process attached to that server is dropped, and only if nobody is
//! logged in as them at that moment (another test process may be using them;
//! then they stay). [`TestServer::shared`] lives in a static that is never
//! dropped, and Rust runs no destructor at process exit, so roles created
//! through it are left on the server. That is harmless: creating them is
//! idempotent, and the next run reuses them (and resets their passwords).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead as _};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::tls::{Certs, CERT_USER, MD5_PASSWORD, MD5_USER, PLAIN_ONLY, SCRAM_PASSWORD, SCRAM_USER, SSL_ONLY};

/// Roles the harness creates, one per authentication method, so the
/// drivers' authentication code can be tested against a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthRole {
    /// `duet_trust`: no password at all (`trust`), the baseline.
    Trust,
    /// `duet_clear` / `clearpass`: the server asks for the cleartext
    /// password (`password`).
    Cleartext,
    /// `duet_md5` / `md5pass`: the password is stored as MD5 so the server
    /// really sends an MD5 challenge (`md5`).
    Md5,
    /// `duet_scram` / `scrampass`: SCRAM-SHA-256 (`scram-sha-256`).
    Scram,
}

impl AuthRole {
    /// Every role, for tests that loop over all authentication methods.
    pub const ALL: [AuthRole; 4] = [AuthRole::Trust, AuthRole::Cleartext, AuthRole::Md5, AuthRole::Scram];

    /// The role's name on the server, for tests that check `current_user`.
    pub fn user(self) -> &'static str {
        match self {
            AuthRole::Trust => "duet_trust",
            AuthRole::Cleartext => "duet_clear",
            AuthRole::Md5 => "duet_md5",
            AuthRole::Scram => "duet_scram",
        }
    }

    /// The role's correct password (`None` for `Trust`), so tests can build
    /// their own connection parameters.
    pub fn password(self) -> Option<&'static str> {
        match self {
            AuthRole::Trust => None,
            AuthRole::Cleartext => Some("clearpass"),
            AuthRole::Md5 => Some("md5pass"),
            AuthRole::Scram => Some("scrampass"),
        }
    }

    /// The `pg_hba.conf` method the harness assigns to the role.
    fn hba_method(self) -> &'static str {
        match self {
            AuthRole::Trust => "trust",
            AuthRole::Cleartext => "password",
            AuthRole::Md5 => "md5",
            AuthRole::Scram => "scram-sha-256",
        }
    }
}

/// A PostgreSQL server to run tests against: either one the harness started
/// (and will stop), or the one named by `DATABASE_URL`. Its `Debug` output
/// hides the password.
pub struct TestServer {
    /// Superuser URL.
    url: String,
    /// The superuser's password from `DATABASE_URL`, kept only to scrub it
    /// from `psql`'s messages.
    password: Option<String>,
    /// With `DATABASE_URL`: the key of this server's entry in
    /// [`EXTERNAL_ROLES`], when it holds a claim on the auth roles.
    roles_claim: Option<String>,
    /// Host as written in the URL (IPv6 keeps its brackets); used to build
    /// the per-role URLs.
    host_raw: String,
    port: u16,
    /// Database the per-role URLs point at.
    dbname: String,
    /// `?…` part of `DATABASE_URL` (e.g. `sslmode`), kept on per-role URLs.
    query: String,
    auth_roles: bool,
    /// Major version, read from the server on first use.
    version: OnceLock<u32>,
    /// The certificates its TLS setup uses, for a TLS server.
    certs: Option<&'static Certs>,
    /// Present when the harness started the server itself.
    owned: Option<Owned>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("url", &redact(&self.url))
            .field("host_raw", &self.host_raw)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("query", &redact_query(&self.query))
            .field("auth_roles", &self.auth_roles)
            .field("version", &self.version.get())
            .field("tls", &self.certs.is_some())
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

/// A cluster started by the harness: where it lives and how to stop it.
#[derive(Debug)]
struct Owned {
    /// Temp dir: holds `data/`, the server log and the Unix socket.
    dir: PathBuf,
    bins: Bins,
    /// Whether postgres programs must be run through `runuser -u postgres`.
    as_postgres: bool,
    /// `listen_addresses`.
    listen: &'static str,
    /// More `-c name=value` server options (TLS), already shell-quoted;
    /// kept for restarts and handed on to replicas.
    extra_opts: String,
    /// Whether the server may be running (so `Drop` must stop it).
    started: bool,
    /// The watchdog; dropping its stdin (the pipe) tells it to clean up.
    watchdog: Option<Child>,
}

/// Env var that picks the PostgreSQL major version of every server the
/// harness starts: `15` (the default) or `18`.
pub const PG_VERSION_ENV: &str = "DUET_PG";
/// Env var naming where `scripts/install-pg18` put PostgreSQL 18.
pub const PG18_DIR_ENV: &str = "DUET_PG18_DIR";
/// Where `scripts/install-pg18` puts PostgreSQL 18 unless [`PG18_DIR_ENV`]
/// says otherwise.
pub const PG18_DEFAULT_DIR: &str = "/opt/duet-postgresql-18";

/// Where the PostgreSQL programs are.
#[derive(Debug, Clone)]
struct Bins {
    /// Server bin dir (`initdb`, `pg_ctl`); `None` = rely on `PATH`.
    dir: Option<PathBuf>,
    /// `LD_LIBRARY_PATH` for programs from `dir` (and the server they
    /// start): the PostgreSQL 18 build's server modules (the walreceiver a
    /// replica loads) find its libpq only through it; without it they would
    /// load Debian's libpq 15 (see `scripts/install-pg18`).
    lib_dir: Option<PathBuf>,
    /// The major version `DUET_PG` asked for, checked against each started
    /// server so a wrong binary never passes for the asked-for version;
    /// `None` when `DUET_PG` is unset (whatever Debian has, as before).
    wanted: Option<u32>,
}

impl Bins {
    /// The server programs `DUET_PG` selects, looked up once per process.
    fn server() -> io::Result<&'static Bins> {
        static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();
        BINS.get_or_init(Bins::select)
            .as_ref()
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.clone()))
    }

    /// Where `psql` comes from: the install `DUET_PG` selects (so with 18,
    /// psql 18, which can do direct TLS), or Debian's when that selection is
    /// broken (the server cannot start then anyway, but a `DATABASE_URL`
    /// server can still be reached).
    fn client() -> &'static Bins {
        static BINS: OnceLock<Bins> = OnceLock::new();
        BINS.get_or_init(|| match Bins::server() {
            Ok(b) if b.dir.as_ref().is_some_and(|d| d.join("psql").is_file()) => b.clone(),
            _ => Bins::find(),
        })
    }

    fn select() -> Result<Bins, String> {
        let wanted = std::env::var(PG_VERSION_ENV).unwrap_or_default();
        match wanted.trim() {
            "" => Ok(Bins::find()),
            "15" => Ok(Bins {
                wanted: Some(15),
                ..Bins::find()
            }),
            "18" => {
                let dir = std::env::var_os(PG18_DIR_ENV)
                    .filter(|d| !d.is_empty())
                    .map_or_else(|| PathBuf::from(PG18_DEFAULT_DIR), PathBuf::from);
                let bin = dir.join("bin");
                // Never fall back to another version: a run that says 18
                // must test 18.
                if !bin.join("postgres").is_file() || !bin.join("initdb").is_file() {
                    return Err(format!(
                        "{PG_VERSION_ENV}=18 but there is no PostgreSQL 18 in {} (no bin/postgres, bin/initdb): \
                         run scripts/install-pg18 (it installs to ${PG18_DIR_ENV}, default {PG18_DEFAULT_DIR})",
                        dir.display()
                    ));
                }
                Ok(Bins {
                    dir: Some(bin),
                    lib_dir: Some(dir.join("lib")),
                    wanted: Some(18),
                })
            }
            other => Err(format!(
                "{PG_VERSION_ENV}={other:?}: the test harness knows 15 (Debian's, the default) and 18 \
                 (scripts/install-pg18)"
            )),
        }
    }

    fn find() -> Bins {
        let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
        let found = |dir: Option<PathBuf>| Bins {
            dir,
            lib_dir: None,
            wanted: None,
        };
        if let Ok(out) = Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_initdb(&dir) {
                    return found(Some(dir));
                }
            }
        }
        // Debian layout: /usr/lib/postgresql/<major>/bin; take the newest.
        let mut best: Option<(u32, PathBuf)> = None;
        if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
            for e in entries.flatten() {
                let Some(major) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let bin = e.path().join("bin");
                if has_initdb(&bin) && best.as_ref().is_none_or(|(m, _)| major > *m) {
                    best = Some((major, bin));
                }
            }
        }
        found(best.map(|(_, d)| d))
    }

    /// Path of a program: in the bin dir if it is there, else bare (`PATH`).
    fn program(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(d) if d.join(name).is_file() => d.join(name),
            _ => PathBuf::from(name),
        }
    }

    /// A command for program `name` with the library path it needs.
    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.program(name));
        self.set_lib_path(&mut cmd);
        cmd
    }

    fn set_lib_path(&self, cmd: &mut Command) {
        if let Some(lib) = &self.lib_dir {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
    }

    /// Whether these server programs were built with OpenSSL, read from
    /// `pg_config --configure`. `None` when `pg_config` cannot say.
    fn ssl_built(&self) -> Option<bool> {
        let out = self
            .command("pg_config")
            .arg("--configure")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let flags = String::from_utf8_lossy(&out.stdout);
        Some(flags.contains("--with-openssl") || flags.contains("--with-ssl=openssl"))
    }
}

/// The harness's roles, their passwords and grants. Idempotent (it also
/// runs against a `DATABASE_URL` server that may already have the roles).
/// `password_encryption` is switched per role so `duet_md5` really has an
/// MD5 hash (otherwise the server answers an `md5` hba line with SCRAM).
const ROLES_SQL: &str = "\
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duet_trust') THEN CREATE ROLE duet_trust; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duet_clear') THEN CREATE ROLE duet_clear; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duet_md5') THEN CREATE ROLE duet_md5; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duet_scram') THEN CREATE ROLE duet_scram; END IF;
END$$;
ALTER ROLE duet_trust LOGIN PASSWORD NULL;
SET password_encryption = 'scram-sha-256';
ALTER ROLE duet_clear LOGIN PASSWORD 'clearpass';
ALTER ROLE duet_scram LOGIN PASSWORD 'scrampass';
SET password_encryption = 'md5';
ALTER ROLE duet_md5 LOGIN PASSWORD 'md5pass';
GRANT CONNECT, TEMPORARY ON DATABASE postgres TO duet_trust, duet_clear, duet_md5, duet_scram;
GRANT USAGE, CREATE ON SCHEMA public TO duet_trust, duet_clear, duet_md5, duet_scram;
";

/// The TLS server's extra roles (a fresh cluster: no `IF NOT EXISTS`
/// needed). `md5_user`'s password is stored as MD5 so its `md5` line really
/// asks for MD5 (PostgreSQL 18 warns that MD5 passwords are deprecated).
fn tls_roles_sql() -> String {
    format!(
        "CREATE ROLE {CERT_USER} LOGIN;
CREATE ROLE {SSL_ONLY} LOGIN;
CREATE ROLE {PLAIN_ONLY} LOGIN;
SET password_encryption = 'scram-sha-256';
CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';
SET password_encryption = 'md5';
CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';
GRANT USAGE, CREATE ON SCHEMA public TO {CERT_USER}, {SSL_ONLY}, {PLAIN_ONLY}, {SCRAM_USER}, {MD5_USER};
"
    )
}

/// Drops the roles in `$ROLES` (replaced by a text array), unless someone is logged in
/// as one of them (another process may still be testing with them).
/// `DROP OWNED` takes their grants (and anything tests left) first.
const DROP_ROLES_SQL: &str = "\
DO $$
DECLARE r text;
BEGIN
  IF EXISTS (SELECT FROM pg_stat_activity WHERE usename = ANY($ROLES)) THEN
    RAISE EXCEPTION 'auth roles in use by another session: left in place';
  END IF;
  FOREACH r IN ARRAY $ROLES LOOP
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('DROP OWNED BY %I', r);
      EXECUTE format('DROP ROLE %I', r);
    END IF;
  END LOOP;
END$$;
";

/// The auth roles this process holds on each `DATABASE_URL` server (keyed by
/// host, port and database): how many live [`TestServer`]s use them, and
/// which of them this process created (and so will drop when the last goes).
static EXTERNAL_ROLES: Mutex<Option<HashMap<String, RoleClaim>>> = Mutex::new(None);

#[derive(Default)]
struct RoleClaim {
    holders: usize,
    created: Vec<&'static str>,
}

static SHARED: OnceLock<Result<TestServer, String>> = OnceLock::new();
static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestServer {
    /// Starts a new server (or attaches to `DATABASE_URL`). Use this when a
    /// test needs its own server, e.g. to restart or reconfigure it; most
    /// tests should share one via [`TestServer::shared`].
    ///
    /// With `DATABASE_URL` set no process is started: the auth roles are
    /// created there with `psql` if possible and
    /// [`auth_roles_available`](Self::auth_roles_available) reports whether
    /// that worked. Otherwise a fresh cluster is `initdb`'d in a temp dir and
    /// started on a free port, with the roles and `pg_hba.conf` in place.
    pub fn start() -> io::Result<TestServer> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Self::external(url.trim().to_string()),
            _ => Self::launch(),
        }
    }

    /// Stops the server the harness started (immediate shutdown, as a crash
    /// or a failover would) and starts it again on the same port: what a
    /// client sees when its server restarts under it. An error for a
    /// `DATABASE_URL` server, which the harness does not control.
    pub fn restart(&mut self) -> io::Result<()> {
        let port = self.port();
        let owned = self
            .owned
            .as_mut()
            .ok_or_else(|| io::Error::other("restart needs a server the harness started, not DATABASE_URL's"))?;
        owned.stop();
        owned.pg_start(port).map_err(|e| match e {
            StartError::PortInUse(e) | StartError::Other(e) => e,
        })
    }

    /// The server shared by everything in this process, started on first
    /// use, so a test binary pays for `initdb` once. Stopped by the watchdog
    /// when the process exits.
    ///
    /// # Panics
    /// If the server cannot be started (the message says why); every later
    /// call panics with the same message instead of retrying.
    pub fn shared() -> &'static TestServer {
        match SHARED.get_or_init(|| TestServer::start().map_err(|e| e.to_string())) {
            Ok(server) => server,
            Err(e) => panic!("duet test harness: cannot start the shared PostgreSQL server: {e}"),
        }
    }

    /// A fresh server with TLS: `ssl=on` with [`Certs`]' server certificate
    /// and key, their CA as `ssl_ca_file` (for client certificates), and the
    /// roles of [`crate::tls`] ([`CERT_USER`], [`SSL_ONLY`], [`PLAIN_ONLY`],
    /// [`SCRAM_USER`], [`MD5_USER`]) each limited by its `pg_hba.conf` line,
    /// besides the auth roles of [`AuthRole`]. It listens on 127.0.0.1 and
    /// ::1. Always harness-started, `DATABASE_URL` or not. Most tests should
    /// share one via [`TestServer::shared_tls`].
    ///
    /// An error when the server binaries have no OpenSSL (both installs the
    /// harness knows have it; an old `scripts/install-pg18` one did not:
    /// rerun the script).
    pub fn start_tls() -> io::Result<TestServer> {
        Self::launch_with(Flavor::Tls(Certs::get()?))
    }

    /// The TLS server shared by everything in this process (see
    /// [`start_tls`](Self::start_tls)), started on first use.
    ///
    /// # Panics
    /// If it cannot be started; every later call panics the same way.
    pub fn shared_tls() -> &'static TestServer {
        static TLS: OnceLock<Result<TestServer, String>> = OnceLock::new();
        match TLS.get_or_init(|| TestServer::start_tls().map_err(|e| e.to_string())) {
            Ok(server) => server,
            Err(e) => panic!("duet test harness: cannot start the TLS PostgreSQL server: {e}"),
        }
    }

    /// Whether the server binaries `DUET_PG` selects can serve TLS: true for
    /// both installs the harness knows (Debian's 15, `scripts/install-pg18`'s
    /// 18). Not a reason to skip a test: a TLS test should call
    /// [`shared_tls`](Self::shared_tls), which fails loudly without OpenSSL.
    /// An error when `DUET_PG` names binaries that are not there.
    pub fn tls_supported() -> io::Result<bool> {
        // When pg_config cannot tell, try: the server's error says why.
        Ok(Bins::server()?.ssl_built().unwrap_or(true))
    }

    /// Whether the server takes direct TLS (`sslnegotiation=direct`: the
    /// TLS handshake right away, with ALPN `postgresql`, no SSLRequest):
    /// PostgreSQL 17 and later ([`version`](Self::version) >= 17). On a
    /// plaintext server there is no TLS either way.
    ///
    /// # Panics
    /// As [`version`](Self::version).
    pub fn direct_tls_supported(&self) -> bool {
        self.version() >= 17
    }

    /// The certificates a TLS server uses (`None` for a plaintext one).
    pub fn certs(&self) -> Option<&'static Certs> {
        self.certs
    }

    /// The server's major version (15, 18, …), from `SHOW
    /// server_version_num`, so tests can branch on what it supports (e.g.
    /// protocol 3.2 and direct TLS need 17+).
    ///
    /// # Panics
    /// If a `DATABASE_URL` server cannot be asked (harness-started servers
    /// read it when they start).
    pub fn version(&self) -> u32 {
        *self.version.get_or_init(|| {
            self.query_version()
                .unwrap_or_else(|e| panic!("duet test harness: cannot read the server's version: {e}"))
        })
    }

    /// A streaming replica of this server (which the harness must have
    /// started): `pg_basebackup -R` from it, started on another free port
    /// with the same options (TLS ones included), returned once it accepts
    /// connections and `pg_is_in_recovery()` is true. It is read-only (hot
    /// standby) until [`promote`](Self::promote)d; stopped and removed on
    /// drop. Same version as its primary, the same roles (they replicate)
    /// and `pg_hba.conf` (copied).
    pub fn start_replica(&self) -> io::Result<TestServer> {
        let primary = self
            .owned
            .as_ref()
            .ok_or_else(|| io::Error::other("start_replica needs a primary the harness started, not DATABASE_URL's"))?;
        // The replica must be the primary's version: never some other
        // pg_basebackup found on PATH.
        if let Some(dir) = &primary.bins.dir {
            if !dir.join("pg_basebackup").is_file() {
                return Err(io::Error::other(format!(
                    "no pg_basebackup in {}: cannot make a replica",
                    dir.display()
                )));
            }
        }
        let (dir, as_postgres) = make_temp_dir()?;
        let mut owned = Owned {
            dir,
            bins: primary.bins.clone(),
            as_postgres,
            listen: primary.listen,
            extra_opts: primary.extra_opts.clone(),
            started: false,
            watchdog: None,
        };
        owned.watchdog = Some(owned.spawn_watchdog()?);
        let data = owned.data_dir();
        // Over the primary's Unix socket (`local replication all trust`);
        // -R writes standby.signal and primary_conninfo; -c fast: do not
        // wait for a scheduled checkpoint.
        let out = owned
            .pg_command("pg_basebackup")
            .arg("-D")
            .arg(&data)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-w",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(&primary.dir)
            .args(["-p", &self.port.to_string()])
            .output()
            .map_err(|e| owned.spawn_error("pg_basebackup", e))?;
        check(&out, "pg_basebackup")?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
            .map_err(|e| annotate(e, &format!("chmod 0700 {}", data.display())))?;
        let port = owned.start_on_free_port()?;
        let mut replica = TestServer::owned_at(port, owned, self.certs);
        replica.auth_roles = self.auth_roles;
        replica.check_version()?;
        replica.wait_for_recovery(true, Duration::from_secs(30))?;
        Ok(replica)
    }

    /// A replica of [`shared`](Self::shared) (see
    /// [`start_replica`](Self::start_replica)), started on first use, for
    /// tests that need a read-only standby but do not promote it (promote
    /// your own). What is written on the shared server shows up there
    /// (asynchronously: poll).
    ///
    /// # Panics
    /// If it cannot be started, e.g. with `DATABASE_URL` set (the harness
    /// can only replicate a server it started).
    pub fn shared_replica() -> &'static TestServer {
        static REPLICA: OnceLock<Result<TestServer, String>> = OnceLock::new();
        match REPLICA.get_or_init(|| TestServer::shared().start_replica().map_err(|e| e.to_string())) {
            Ok(server) => server,
            Err(e) => panic!("duet test harness: cannot start the replica of the shared server: {e}"),
        }
    }

    /// Promotes a replica (`pg_ctl promote -w`) and waits until
    /// `pg_is_in_recovery()` is false: it then accepts writes.
    pub fn promote(&self) -> io::Result<()> {
        let owned = self
            .owned
            .as_ref()
            .ok_or_else(|| io::Error::other("promote needs a replica the harness started"))?;
        let out = owned
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(owned.data_dir())
            .args(["-w", "-t", "30", "promote"])
            .output()
            .map_err(|e| owned.spawn_error("pg_ctl", e))?;
        check(&out, "pg_ctl promote")?;
        self.wait_for_recovery(false, Duration::from_secs(30))
    }

    /// `SELECT pg_is_in_recovery()`: whether this is a (not yet promoted)
    /// replica.
    pub fn in_recovery(&self) -> io::Result<bool> {
        match self.psql_value("SELECT pg_is_in_recovery()")?.as_str() {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(io::Error::other(format!("pg_is_in_recovery() answered {other:?}"))),
        }
    }

    /// Superuser URL over TCP (`postgres://postgres@127.0.0.1:PORT/postgres`,
    /// or a `DATABASE_URL` URL verbatim; a `key=value` one is rewritten as the
    /// equivalent URL, so tests may append `?option=value`), for tests that
    /// need full privileges.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// URL for the role of `role`'s auth method with its correct password
    /// (none for `Trust`), e.g. `postgres://duet_md5:md5pass@127.0.0.1:PORT/postgres`.
    pub fn url_for(&self, role: AuthRole) -> String {
        self.url_for_with_password(role, role.password())
    }

    /// Like [`url_for`](Self::url_for) but with the given password, or none
    /// at all, to test wrong and missing passwords.
    pub fn url_for_with_password(&self, role: AuthRole, password: Option<&str>) -> String {
        self.url_as(role.user(), password)
    }

    /// URL for any `user` (e.g. the roles of [`crate::tls`]), with
    /// `password` or none, on this server's host, port and database (and
    /// `DATABASE_URL`'s `?…` options).
    pub fn url_as(&self, user: &str, password: Option<&str>) -> String {
        let mut url = format!("postgres://{}", percent_encode(user));
        if let Some(pw) = password {
            url.push(':');
            url.push_str(&percent_encode(pw));
        }
        let _ = write!(
            url,
            "@{}:{}/{}{}",
            self.host_raw,
            self.port,
            percent_encode(&self.dbname),
            self.query
        );
        url
    }

    /// TCP host of the server, for drivers configured by parts rather than
    /// by URL.
    pub fn host(&self) -> String {
        let h = self.host_raw.trim_start_matches('[').trim_end_matches(']');
        if h.is_empty() {
            "localhost".to_string()
        } else {
            percent_decode(h)
        }
    }

    /// TCP port of the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory of the server's Unix socket (`.s.PGSQL.<port>`) when the
    /// harness started the server, to test Unix-socket connections; `None`
    /// with `DATABASE_URL`.
    pub fn socket_dir(&self) -> Option<PathBuf> {
        self.owned.as_ref().map(|o| o.dir.clone())
    }

    /// Whether the per-auth-method roles exist and log in with their
    /// passwords. Always true for a harness-started server; with
    /// `DATABASE_URL` it depends on that server, so auth tests should skip
    /// when this is false.
    pub fn auth_roles_available(&self) -> bool {
        self.auth_roles
    }

    /// Runs `sql` as superuser with `psql` and returns its output unaligned,
    /// without headers, trimmed: `"t"` for `SELECT true`, one line per row.
    pub fn psql_value(&self, sql: &str) -> io::Result<String> {
        let out = self
            .psql_command(&self.url)
            .args(["-A", "-t", "-c", sql])
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run psql: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(io::Error::other(self.scrub(&format!(
                "psql failed ({}) running {sql:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))))
        }
    }

    /// Runs `sql` as superuser with `psql -v ON_ERROR_STOP=1 -X -q` and
    /// returns its stdout. For test setup (the code under test should not
    /// be used to set up its own tests); errors carry psql's stderr.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        let out = self
            .psql_command(&self.url)
            .arg("-c")
            .arg(sql)
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run psql: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(self.scrub(&format!(
                "psql failed ({}) running {sql:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))))
        }
    }

    /// `text` without the superuser's password (should a tool quote it).
    fn scrub(&self, text: &str) -> String {
        match self.password.as_deref() {
            Some(pw) if !pw.is_empty() => text.replace(pw, "***"),
            _ => text.to_string(),
        }
    }

    /// `psql` set up to run against `url`, with no stdin (never prompts).
    fn psql_command(&self, url: &str) -> Command {
        let mut cmd = Bins::client().command("psql");
        cmd.args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-d", url])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        cmd
    }

    /// Attaches to the server named by `DATABASE_URL` (a URL or a libpq
    /// `key=value` string), creating the auth roles there if it can.
    fn external(database_url: String) -> io::Result<TestServer> {
        let target = parse_database_url(&database_url)?;
        let mut server = TestServer {
            url: target.url,
            password: target.password,
            roles_claim: None,
            host_raw: target.parsed.host_raw,
            port: target.parsed.port,
            dbname: target.parsed.dbname,
            query: target.parsed.query,
            auth_roles: false,
            version: OnceLock::new(),
            certs: None,
            owned: None,
        };
        let before = server.existing_roles();
        // Concurrent test processes may race on CREATE/ALTER ROLE
        // ("tuple concurrently updated"); retry a little.
        let created = (0..3).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            server.psql(ROLES_SQL).is_ok()
        });
        if created {
            // Roles we cannot see before are not ours to drop: only claim
            // the creation of those we saw missing.
            let made: Vec<&'static str> = match before {
                Some(before) => AuthRole::ALL
                    .iter()
                    .map(|r| r.user())
                    .filter(|u| !before.iter().any(|b| b == u))
                    .collect(),
                None => Vec::new(),
            };
            let key = format!("{}:{}/{}", server.host_raw, server.port, server.dbname);
            let mut registry = EXTERNAL_ROLES.lock().unwrap_or_else(|p| p.into_inner());
            let claim = registry
                .get_or_insert_with(HashMap::new)
                .entry(key.clone())
                .or_default();
            claim.holders += 1;
            for u in made {
                if !claim.created.contains(&u) {
                    claim.created.push(u);
                }
            }
            server.roles_claim = Some(key);
        }
        server.auth_roles = created && server.roles_work();
        Ok(server)
    }

    /// Which auth roles exist on the server now (`None` if it cannot say).
    fn existing_roles(&self) -> Option<Vec<String>> {
        let names: Vec<String> = AuthRole::ALL.iter().map(|r| format!("'{}'", r.user())).collect();
        let sql = format!("SELECT rolname FROM pg_roles WHERE rolname IN ({})", names.join(", "));
        let out = self
            .psql_command(&self.url)
            .args(["-A", "-t", "-c", &sql])
            .output()
            .ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
    }

    /// Gives up this server's claim on the auth roles of a `DATABASE_URL`
    /// server; the last holder drops the roles this process created.
    fn release_roles(&mut self) {
        let Some(key) = self.roles_claim.take() else {
            return;
        };
        let to_drop = {
            let mut registry = EXTERNAL_ROLES.lock().unwrap_or_else(|p| p.into_inner());
            let Some(map) = registry.as_mut() else {
                return;
            };
            let Some(claim) = map.get_mut(&key) else {
                return;
            };
            claim.holders -= 1;
            if claim.holders > 0 {
                return;
            }
            map.remove(&key).map(|c| c.created).unwrap_or_default()
        };
        if to_drop.is_empty() {
            return;
        }
        // The names are the harness's own constants, safe to inline.
        let array = to_drop.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(", ");
        if let Err(e) = self.psql(&DROP_ROLES_SQL.replace("$ROLES", &format!("ARRAY[{array}]::text[]"))) {
            eprintln!("duet test harness: the auth roles it created on DATABASE_URL stay: {e}");
        }
    }

    /// Checks that each role logs in with its password and, for the
    /// password roles, that a wrong one is refused (i.e. the server's
    /// pg_hba.conf really asks for it).
    fn roles_work(&self) -> bool {
        AuthRole::ALL.iter().all(|&role| {
            let ok = self.try_login(role, role.password());
            match role.password() {
                None => ok,
                Some(_) => ok && !self.try_login(role, Some("duet-wrong-password")),
            }
        })
    }

    /// Whether `role` can run `SELECT 1` over TCP with `password` (given
    /// through `PGPASSWORD`; `None` = no password at all).
    fn try_login(&self, role: AuthRole, password: Option<&str>) -> bool {
        let url = self.url_for_with_password(role, None);
        let mut cmd = self.psql_command(&url);
        cmd.args(["-w", "-c", "SELECT 1"])
            .env("PGPASSFILE", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match password {
            Some(pw) => cmd.env("PGPASSWORD", pw),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd.status().is_ok_and(|s| s.success())
    }

    /// Creates, configures and starts a private plaintext cluster.
    fn launch() -> io::Result<TestServer> {
        Self::launch_with(Flavor::Plain)
    }

    /// Creates, configures and starts a private cluster of `flavor`.
    fn launch_with(flavor: Flavor) -> io::Result<TestServer> {
        let bins = Bins::server()?.clone();
        let (listen, extra_opts, certs) = match flavor {
            Flavor::Plain => ("127.0.0.1", String::new(), None),
            Flavor::Tls(certs) => {
                if bins.ssl_built() == Some(false) {
                    return Err(io::Error::other(format!(
                        "no TLS server: the PostgreSQL in {} was built without OpenSSL (pg_config --configure); \
                         for {PG_VERSION_ENV}=18, rerun scripts/install-pg18 (it replaces such a build)",
                        bins.dir.as_deref().unwrap_or(Path::new("PATH")).display()
                    )));
                }
                let file = |p: &Path| sh_quote(&p.to_string_lossy());
                let opts = format!(
                    " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={}",
                    file(&certs.server_cert),
                    file(&certs.server_key),
                    file(&certs.ca_cert),
                );
                // IPv6 too, so `host=localhost` (which may resolve to ::1
                // first) and the `::1/128` hba lines get used. A machine
                // without ::1 only logs a warning.
                ("127.0.0.1,::1", opts, Some(certs))
            }
        };
        let (dir, as_postgres) = make_temp_dir()?;
        // From here on `owned` is dropped (stop + rm) on every error path,
        // and the watchdog covers the process dying mid-way.
        let mut owned = Owned {
            dir,
            bins,
            as_postgres,
            listen,
            extra_opts,
            started: false,
            watchdog: None,
        };
        owned.watchdog = Some(owned.spawn_watchdog()?);
        let data = owned.data_dir();

        let out = owned
            .pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .map_err(|e| owned.spawn_error("initdb", e))?;
        check(&out, "initdb")?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
            .map_err(|e| annotate(e, &format!("chmod 0700 {}", data.display())))?;
        // Before the first start, so no reload race: role lines first (first
        // match wins), then trust for everything else.
        let hba = data.join("pg_hba.conf");
        fs::write(&hba, hba_conf(certs.is_some())).map_err(|e| annotate(e, &format!("writing {}", hba.display())))?;

        let port = owned.start_on_free_port()?;
        let mut server = TestServer::owned_at(port, owned, certs);
        server.check_version()?;
        server
            .psql(ROLES_SQL)
            .map_err(|e| annotate(e, "creating the auth roles"))?;
        if certs.is_some() {
            server
                .psql(&tls_roles_sql())
                .map_err(|e| annotate(e, "creating the TLS roles"))?;
        }
        server.auth_roles = true;
        Ok(server)
    }

    /// A `TestServer` for a cluster the harness just started on `port`.
    fn owned_at(port: u16, owned: Owned, certs: Option<&'static Certs>) -> TestServer {
        TestServer {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            password: None,
            roles_claim: None,
            host_raw: "127.0.0.1".to_string(),
            port,
            dbname: "postgres".to_string(),
            query: String::new(),
            auth_roles: false,
            version: OnceLock::new(),
            certs,
            owned: Some(owned),
        }
    }

    /// Reads the version of a server the harness started, and fails if
    /// `DUET_PG` asked for another one (never test 15 believing it is 18).
    fn check_version(&self) -> io::Result<()> {
        let version = self.query_version()?;
        let _ = self.version.set(version);
        match self.owned.as_ref().and_then(|o| o.bins.wanted) {
            Some(wanted) if wanted != version => Err(io::Error::other(format!(
                "{PG_VERSION_ENV}={wanted}, but the server started from {} is PostgreSQL {version}",
                self.owned
                    .as_ref()
                    .and_then(|o| o.bins.dir.as_deref())
                    .unwrap_or(Path::new("PATH"))
                    .display()
            ))),
            _ => Ok(()),
        }
    }

    fn query_version(&self) -> io::Result<u32> {
        let num = self.psql_value("SHOW server_version_num")?;
        num.parse::<u32>()
            .map(|n| n / 10000)
            .map_err(|_| io::Error::other(format!("SHOW server_version_num answered {num:?}")))
    }

    /// Waits until `pg_is_in_recovery()` is `want`.
    fn wait_for_recovery(&self, want: bool, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.in_recovery();
            match answer {
                Ok(r) if r == want => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(io::Error::other(format!(
                        "pg_is_in_recovery() did not become {want} within {timeout:?}; last answer: {answer:?}"
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// What kind of cluster `launch_with` makes.
#[derive(Clone, Copy)]
enum Flavor {
    /// `ssl` off: the shared server and [`TestServer::start`].
    Plain,
    /// `ssl=on` with these certificates, and the TLS roles and hba lines.
    Tls(&'static Certs),
}

impl Drop for TestServer {
    /// Stops the cluster (`pg_ctl -m immediate stop`) and removes its temp
    /// dir if the harness started it. A `DATABASE_URL` server keeps running;
    /// the auth roles the harness created there are dropped when the last
    /// `TestServer` of this process attached to it goes (see the module docs).
    fn drop(&mut self) {
        // The work is in `Owned::drop`.
        self.owned.take();
        self.release_roles();
    }
}

impl Owned {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A postgres program run as the `postgres` user when we are root
    /// (`initdb`/`postgres` refuse to run as root), from the temp dir (the
    /// caller's cwd may be unreadable for `postgres`).
    fn pg_command(&self, program: &str) -> Command {
        let prog = self.bins.program(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(prog);
            c
        } else {
            Command::new(prog)
        };
        // `runuser -u` (no `-l`) passes the environment on.
        self.bins.set_lib_path(&mut cmd);
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn spawn_error(&self, what: &str, e: io::Error) -> io::Error {
        let how = if self.as_postgres {
            " via `runuser -u postgres`"
        } else {
            ""
        };
        let bin = match &self.bins.dir {
            Some(d) => format!("bin dir {}", d.display()),
            None => {
                "no PostgreSQL bin dir found (pg_config --bindir, /usr/lib/postgresql/*/bin), using PATH".to_string()
            }
        };
        io::Error::new(e.kind(), format!("cannot run {what}{how} ({bin}): {e}"))
    }

    /// Starts the cluster on a free port and returns it. The free port can
    /// be taken between probing and binding; only that failure is worth
    /// another try with a new port.
    fn start_on_free_port(&mut self) -> io::Result<u16> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match self.pg_start(port) {
                Ok(()) => return Ok(port),
                Err(StartError::PortInUse(e)) => last_err = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("PostgreSQL did not start")))
    }

    /// `pg_ctl start` on `port`; on failure the error carries pg_ctl's
    /// output and the tail of the server log, and the server is stopped.
    fn pg_start(&mut self, port: u16) -> Result<(), StartError> {
        let log = self.log_file();
        let _ = fs::remove_file(&log);
        let opts = format!(
            "-p {port} -k {} -c listen_addresses={} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200{}",
            sh_quote(&self.dir.to_string_lossy()),
            sh_quote(self.listen),
            self.extra_opts,
        );
        self.started = true;
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .output()
            .map_err(|e| StartError::Other(self.spawn_error("pg_ctl", e)))?;
        if out.status.success() {
            // With two listen addresses the server starts as long as one
            // binds: a clash on 127.0.0.1 (where tests connect) must still
            // count as a clash.
            if !log_tail(&log, 30).contains("could not bind IPv4 address \"127.0.0.1\"") {
                return Ok(());
            }
            self.stop();
            return Err(StartError::PortInUse(io::Error::other(format!(
                "port {port} on 127.0.0.1 is taken"
            ))));
        }
        self.stop();
        let tail = log_tail(&log, 30);
        let msg = format!(
            "pg_ctl start on port {port} failed ({}):\n{}\n{}\n--- tail of {} ---\n{tail}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            log.display(),
        );
        let err = io::Error::other(msg);
        if tail.contains("already in use") || tail.contains("could not create any TCP/IP sockets") {
            Err(StartError::PortInUse(err))
        } else {
            Err(StartError::Other(err))
        }
    }

    /// Immediate shutdown; errors are ignored (it may not be running).
    fn stop(&mut self) {
        if !self.started {
            return;
        }
        self.started = false;
        let _ = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts the detached cleanup shell (see the module docs).
    fn spawn_watchdog(&self) -> io::Result<Child> {
        let pg_ctl = sh_quote(&self.bins.program("pg_ctl").to_string_lossy());
        let runuser = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "trap '' HUP INT; cat >/dev/null; \
             {runuser}{pg_ctl} -D {data} -m immediate -w stop; rm -rf {dir}",
            data = sh_quote(&self.data_dir().to_string_lossy()),
            dir = sh_quote(&self.dir.to_string_lossy()),
        );
        let mut cmd = Command::new("/bin/sh");
        self.bins.set_lib_path(&mut cmd);
        cmd.args(["-c", &script])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at `cargo test` must not
            // kill the watchdog before it has cleaned up.
            .process_group(0)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot spawn the cleanup watchdog (/bin/sh): {e}")))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(mut w) = self.watchdog.take() {
            // Closing the pipe releases the watchdog, which finds nothing
            // left to do; wait so it is not left as a zombie.
            drop(w.stdin.take());
            let _ = w.wait();
        }
    }
}

/// Runs `sql` with `psql` on a libpq connection string, never prompting
/// (`-w`, no `~/.pgpass`, no `PG*` TLS settings from the environment);
/// `Ok(output)` unaligned, trimmed, or `Err(stderr)`. For harness tests.
#[cfg(test)]
pub(crate) fn psql_at(conninfo: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Bins::client().command("psql");
    cmd.args([
        "-X",
        "-q",
        "-w",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
        "-c",
        sql,
    ])
    .env("PGPASSFILE", "/dev/null")
    .env("PGCONNECT_TIMEOUT", "10")
    .stdin(Stdio::null());
    for var in [
        "PGPASSWORD",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGHOSTADDR",
        "PGSSLNEGOTIATION",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `psql --version` of the psql the harness uses (e.g. `psql (PostgreSQL)
/// 18.6`), for harness tests that need to know what it can do.
#[cfg(test)]
pub(crate) fn psql_version() -> String {
    match Bins::client()
        .command("psql")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(e) => format!("cannot run psql: {e}"),
    }
}

/// Why `pg_ctl start` failed: a port clash is retried, anything else is not.
enum StartError {
    PortInUse(io::Error),
    Other(io::Error),
}

/// `pg_hba.conf`: each auth role gets its method over TCP and the Unix
/// socket, before the final catch-all `trust` lines (first match wins).
/// With `tls`, the TLS roles' lines come first; each role limited to TLS
/// (or to plaintext) gets a `reject` line for the other kind of session,
/// as the catch-all `trust` would let it in otherwise. The Unix socket has
/// no TLS: `local` counts as plaintext.
fn hba_conf(tls: bool) -> String {
    let mut s = String::from("# Written by duet's test harness.\n# TYPE  DATABASE  USER  ADDRESS  METHOD\n");
    if tls {
        for addr in ["127.0.0.1/32", "::1/128"] {
            let _ = writeln!(s, "hostssl all {CERT_USER} {addr} cert");
            let _ = writeln!(s, "hostnossl all {CERT_USER} {addr} reject");
            let _ = writeln!(s, "hostssl all {SSL_ONLY} {addr} trust");
            let _ = writeln!(s, "hostnossl all {SSL_ONLY} {addr} reject");
            let _ = writeln!(s, "hostnossl all {PLAIN_ONLY} {addr} trust");
            let _ = writeln!(s, "hostssl all {PLAIN_ONLY} {addr} reject");
            let _ = writeln!(s, "host all {SCRAM_USER} {addr} scram-sha-256");
            let _ = writeln!(s, "host all {MD5_USER} {addr} md5");
        }
        let _ = writeln!(s, "local all {CERT_USER} reject");
        let _ = writeln!(s, "local all {SSL_ONLY} reject");
        let _ = writeln!(s, "local all {PLAIN_ONLY} trust");
        let _ = writeln!(s, "local all {SCRAM_USER} scram-sha-256");
        let _ = writeln!(s, "local all {MD5_USER} md5");
    }
    for role in [AuthRole::Trust, AuthRole::Cleartext, AuthRole::Md5, AuthRole::Scram] {
        let (u, m) = (role.user(), role.hba_method());
        let _ = writeln!(s, "local all {u} {m}");
        let _ = writeln!(s, "host all {u} 127.0.0.1/32 {m}");
        let _ = writeln!(s, "host all {u} ::1/128 {m}");
    }
    s.push_str(
        "local all all trust\n\
         host all all 127.0.0.1/32 trust\n\
         host all all ::1/128 trust\n\
         local replication all trust\n\
         host replication all 127.0.0.1/32 trust\n\
         host replication all ::1/128 trust\n",
    );
    s
}

/// Creates a fresh, unique temp dir (pid + counter + time) and, when we
/// are root, hands it to the `postgres` user. Returns whether postgres
/// programs must run via `runuser`.
pub(crate) fn make_temp_dir() -> io::Result<(PathBuf, bool)> {
    let base = std::env::temp_dir();
    let pid = std::process::id();
    let mut attempt = 0;
    let dir = loop {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("duet-pg-{pid}-{n}-{nanos:x}"));
        match fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 10 => attempt += 1,
            Err(e) => return Err(annotate(e, &format!("creating temp dir {}", dir.display()))),
        }
    };
    // The Unix socket path (dir + "/.s.PGSQL.NNNNN") must fit in sun_path.
    if dir.as_os_str().len() + 16 > 107 {
        let _ = fs::remove_dir(&dir);
        return Err(io::Error::other(format!(
            "temp dir {} is too long for a Unix socket path; set TMPDIR to a shorter directory",
            dir.display()
        )));
    }
    // The dir's owner is our effective uid: root must hand it to postgres.
    let as_postgres = fs::metadata(&dir)?.uid() == 0;
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .stdin(Stdio::null())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            let _ = fs::remove_dir_all(&dir);
            return Err(io::Error::other(format!(
                "running as root, but `chown -R postgres:postgres {}` failed ({status:?}); \
                 initdb/postgres refuse to run as root and need a `postgres` user",
                dir.display()
            )));
        }
    }
    Ok((dir, as_postgres))
}

/// A port that was free a moment ago (bind to port 0, then release it).
/// Racy by nature; `launch` retries with another port if the start fails.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| annotate(e, "finding a free port on 127.0.0.1"))?;
    Ok(listener.local_addr()?.port())
}

fn check(out: &Output, what: &str) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )))
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The last `n` lines of a log file (or why it cannot be read).
fn log_tail(path: &Path, n: usize) -> String {
    match fs::File::open(path) {
        Ok(f) => {
            let lines: Vec<String> = io::BufReader::new(f).lines().map_while(Result::ok).collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// Single-quotes `s` for `/bin/sh` (`pg_ctl -o` goes through a shell too).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of a `postgres://` URL the per-role URLs need.
#[derive(Debug, PartialEq)]
struct ParsedUrl {
    host_raw: String,
    port: u16,
    dbname: String,
    query: String,
}

/// `DATABASE_URL` made ready to use: a URL (a `key=value` string is
/// rewritten as one), its parts, and its password (for scrubbing messages).
#[derive(Debug, PartialEq)]
struct Target {
    url: String,
    parsed: ParsedUrl,
    password: Option<String>,
}

/// Accepts a `postgres://` URL or a libpq `key=value` string.
fn parse_database_url(s: &str) -> io::Result<Target> {
    let s = s.trim();
    if s.contains("://") {
        let parsed = parse_url(s)?;
        return Ok(Target {
            url: s.to_string(),
            parsed,
            password: url_password(s),
        });
    }
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("DATABASE_URL {:?}: {why}", redact(s)),
        )
    };
    let pairs = conninfo_pairs(s).map_err(|why| bad(&why))?;
    let mut user = None;
    let mut password = None;
    let mut host = None;
    let mut port = None;
    let mut dbname = None;
    let mut rest = Vec::new();
    for (k, v, _) in pairs {
        match k.as_str() {
            "user" => user = Some(v),
            "password" => password = Some(v),
            "host" => host = Some(v),
            "port" => port = Some(v),
            "dbname" => dbname = Some(v),
            _ => rest.push((k, v)),
        }
    }
    if host.as_deref().is_some_and(|h| h.contains(',')) {
        return Err(bad("multiple hosts are not supported by the test harness"));
    }
    let port = match port.as_deref() {
        None | Some("") => 5432,
        Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
    };
    let host_raw = match host {
        // A socket directory travels as `?host=` (an empty URL host).
        Some(h) if h.starts_with('/') => {
            rest.insert(0, ("host".to_string(), h));
            String::new()
        }
        Some(h) if h.contains(':') => format!("[{h}]"),
        Some(h) => percent_encode(&h),
        None => String::new(),
    };
    let dbname = dbname
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "postgres".to_string());
    let query: String = rest
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            format!(
                "{}{}={}",
                if i == 0 { '?' } else { '&' },
                percent_encode(k),
                percent_encode(v)
            )
        })
        .collect();
    let mut url = String::from("postgres://");
    if let Some(u) = &user {
        url.push_str(&percent_encode(u));
    }
    if let Some(pw) = &password {
        url.push(':');
        url.push_str(&percent_encode(pw));
    }
    if user.is_some() || password.is_some() {
        url.push('@');
    }
    let _ = write!(url, "{host_raw}:{port}/{}{query}", percent_encode(&dbname));
    Ok(Target {
        url,
        parsed: ParsedUrl {
            host_raw,
            port,
            dbname,
            query,
        },
        password,
    })
}

/// libpq `key=value` pairs (values may be single-quoted, with `\` escapes),
/// each with the byte range of its value as written.
fn conninfo_pairs(s: &str) -> Result<Vec<(String, String, std::ops::Range<usize>)>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut pairs = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            return Ok(pairs);
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[key_start..i].to_string();
        skip_ws(&mut i);
        if b.get(i) != Some(&b'=') {
            // Not quoted: it may be the tail of a password with a space.
            return Err("expected key=value pairs, found a word without '='".to_string());
        }
        i += 1;
        skip_ws(&mut i);
        let value_start = i;
        let mut value = Vec::new();
        if b.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        let value = String::from_utf8_lossy(&value).into_owned();
        pairs.push((key, value, value_start..i));
    }
}

/// The password in a URL's user info, percent-decoded.
fn url_password(url: &str) -> Option<String> {
    let (userinfo, _) = url_userinfo(url)?;
    let (_, pw) = userinfo.split_once(':')?;
    Some(percent_decode(pw))
}

/// A URL's user info (`user[:password]`, as written) and its byte offset.
fn url_userinfo(url: &str) -> Option<(&str, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let head = &rest[..rest.find('/').unwrap_or(rest.len())];
    let at = head.rfind('@')?;
    Some((&rest[..at], start))
}

/// `s` (a URL or a `key=value` string) with any password replaced by `***`,
/// for messages. A string that cannot be split up is not shown at all.
fn redact(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let (head, tail) = match url_userinfo(s) {
            Some((userinfo, start)) => {
                let shown = match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => userinfo.to_string(),
                };
                (format!("{}{shown}@", &s[..start]), &s[start + userinfo.len() + 1..])
            }
            None => (s[..scheme_end + 3].to_string(), &s[scheme_end + 3..]),
        };
        return match tail.find('?') {
            Some(i) => format!("{head}{}{}", &tail[..i], redact_query(&tail[i..])),
            None => format!("{head}{tail}"),
        };
    }
    match conninfo_pairs(s) {
        Ok(pairs) => {
            let mut out = s.to_string();
            for (_, _, span) in pairs.iter().rev().filter(|(k, _, _)| k == "password") {
                out.replace_range(span.clone(), "***");
            }
            out
        }
        Err(_) => "(not shown: it may hold a password)".to_string(),
    }
}

/// A `?a=b&…` query with any `password=` value replaced by `***`.
fn redact_query(q: &str) -> String {
    let Some(body) = q.strip_prefix('?') else {
        return q.to_string();
    };
    let parts: Vec<String> = body
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if percent_decode(k) == "password" => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("?{}", parts.join("&"))
}

/// Minimal `postgres[ql]://[user[:pass]@][host][:port][/db][?params]`
/// parser (single host), enough to derive the per-role URLs. The user info
/// ends at the last '@' before the first '/'. Errors never show the password.
fn parse_url(url: &str) -> io::Result<ParsedUrl> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("DATABASE_URL {:?}: {why}", redact(url)),
        )
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("expected a postgres:// or postgresql:// URL, or key=value pairs"))?;
    let rest = match url_userinfo(url) {
        Some((userinfo, _)) => &rest[userinfo.len() + 1..],
        None => rest,
    };
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, String::new()),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    if hostport.contains(',') {
        return Err(bad("multiple hosts are not supported by the test harness"));
    }
    let (host_raw, port) = if let Some(end) = hostport.strip_prefix('[').and_then(|h| h.find(']')) {
        let end = end + 1; // index of ']' in hostport
        let after = &hostport[end + 1..];
        (hostport[..=end].to_string(), after.strip_prefix(':').unwrap_or(""))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (hostport.to_string(), ""),
        }
    };
    let port = if port.is_empty() {
        5432
    } else {
        port.parse().map_err(|_| bad("invalid port"))?
    };
    let dbname = if path.is_empty() {
        "postgres".to_string()
    } else {
        percent_decode(path)
    };
    Ok(ParsedUrl {
        host_raw,
        port,
        dbname,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `SELECT current_user` with `psql` against `url` (never
    /// prompting; no ~/.pgpass), the password via `PGPASSWORD` if given.
    fn login(server: &TestServer, url: &str, password: Option<&str>) -> Result<String, String> {
        let mut cmd = server.psql_command(url);
        cmd.args(["-w", "-A", "-t", "-c", "SELECT current_user"])
            .env("PGPASSFILE", "/dev/null");
        match password {
            Some(pw) => cmd.env("PGPASSWORD", pw),
            None => cmd.env_remove("PGPASSWORD"),
        };
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn own_server() -> bool {
        !matches!(std::env::var("DATABASE_URL"), Ok(u) if !u.trim().is_empty())
    }

    #[test]
    fn start_select_and_drop() {
        let t = std::time::Instant::now();
        let server = TestServer::start().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("TestServer::start took {:?}", t.elapsed());
        let out = server.psql("SELECT 1 AS one").unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains('1'), "unexpected psql output: {out:?}");
        assert!(server.url().contains(&server.port().to_string()));
        if own_server() {
            let dir = server.socket_dir().expect("socket dir");
            assert!(dir.join(format!(".s.PGSQL.{}", server.port())).exists());
            let mode = fs::metadata(dir.join("data")).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
            let pid = postmaster_pid(&dir);
            assert!(alive(pid));
            drop(server);
            assert!(!dir.exists(), "temp dir left behind");
            assert!(!alive(pid), "postmaster {pid} still running after drop");
        }
    }

    #[test]
    fn auth_roles_log_in_with_their_passwords_only() {
        let server = TestServer::shared();
        assert!(server.auth_roles_available() || !own_server());
        if !server.auth_roles_available() {
            eprintln!("auth roles not available on DATABASE_URL; skipping");
            return;
        }
        for role in AuthRole::ALL {
            let url = server.url_for_with_password(role, None);
            assert_eq!(
                login(server, &url, role.password()),
                Ok(role.user().to_string()),
                "{role:?}"
            );
            // The password inside the URL works too.
            assert_eq!(login(server, &server.url_for(role), None), Ok(role.user().to_string()));
            if role.password().is_some() {
                let err = login(server, &url, Some("wrong")).expect_err("wrong password accepted");
                assert!(err.contains("password authentication failed"), "{role:?}: {err}");
                let bad = server.url_for_with_password(role, Some("wr:ng@/pw"));
                assert!(login(server, &bad, None).is_err(), "{role:?}");
                let err = login(server, &url, None).expect_err("missing password accepted");
                assert!(err.contains("no password supplied"), "{role:?}: {err}");
            } else {
                // trust: any password is ignored.
                assert!(login(server, &url, Some("whatever")).is_ok());
            }
        }
        // MD5 must really be stored as MD5, or the server would use SCRAM.
        let out = server
            .psql("SELECT rolname || '=' || left(rolpassword, 4) FROM pg_authid WHERE rolname LIKE 'duet_%' ORDER BY 1")
            .unwrap();
        assert!(out.contains("duet_md5=md5"), "{out}");
        assert!(out.contains("duet_scram=SCRA"), "{out}");
    }

    #[test]
    fn auth_roles_over_unix_socket() {
        let server = TestServer::shared();
        let Some(dir) = server.socket_dir() else {
            return;
        };
        for role in AuthRole::ALL {
            let url = format!(
                "postgres://{}@/postgres?host={}&port={}",
                role.user(),
                percent_encode(&dir.to_string_lossy()),
                server.port()
            );
            assert_eq!(login(server, &url, role.password()), Ok(role.user().to_string()));
            if role.password().is_some() {
                assert!(login(server, &url, Some("wrong")).is_err(), "{role:?}");
            }
        }
    }

    #[test]
    fn roles_can_create_tables() {
        let server = TestServer::shared();
        if !server.auth_roles_available() {
            return;
        }
        let url = server.url_for(AuthRole::Scram);
        let mut cmd = server.psql_command(&url);
        cmd.args([
            "-c",
            "CREATE TEMP TABLE t (x int); CREATE TABLE duet_harness_check (x int); DROP TABLE duet_harness_check;",
        ]);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn parses_urls() {
        let p = parse_url("postgres://u:p%40ss@db.example:6543/mydb?sslmode=disable").unwrap();
        assert_eq!(
            p,
            ParsedUrl {
                host_raw: "db.example".into(),
                port: 6543,
                dbname: "mydb".into(),
                query: "?sslmode=disable".into()
            }
        );
        let p = parse_url("postgresql://[::1]/").unwrap();
        assert_eq!(
            (p.host_raw.as_str(), p.port, p.dbname.as_str()),
            ("[::1]", 5432, "postgres")
        );
        let p = parse_url("postgres://me@[::1]:7000").unwrap();
        assert_eq!((p.host_raw.as_str(), p.port), ("[::1]", 7000));
        assert!(parse_url("mysql://x").is_err());
        assert_eq!(percent_encode("a:b@c/d"), "a%3Ab%40c%2Fd");
        assert_eq!(percent_decode("a%3Ab%40c"), "a:b@c");
    }

    #[test]
    fn accepts_key_value_database_urls() {
        let t = parse_database_url("host=127.0.0.1 port=5433 user=postgres password=x dbname=postgres").unwrap();
        assert_eq!(t.url, "postgres://postgres:x@127.0.0.1:5433/postgres");
        assert_eq!(t.password.as_deref(), Some("x"));
        assert_eq!(
            t.parsed,
            ParsedUrl {
                host_raw: "127.0.0.1".into(),
                port: 5433,
                dbname: "postgres".into(),
                query: String::new()
            }
        );
        // Quoting, escapes, options kept, IPv6, a socket directory.
        let t = parse_database_url(r"host=::1 user='me' password='a b\'c@/?' dbname='my db' sslmode=disable").unwrap();
        assert_eq!(t.password.as_deref(), Some("a b'c@/?"));
        assert_eq!(
            t.url,
            "postgres://me:a%20b%27c%40%2F%3F@[::1]:5432/my%20db?sslmode=disable"
        );
        assert_eq!(
            (t.parsed.host_raw.as_str(), t.parsed.dbname.as_str()),
            ("[::1]", "my db")
        );
        let t = parse_database_url("host=/run/postgresql port=5432").unwrap();
        assert_eq!(t.url, "postgres://:5432/postgres?host=%2Frun%2Fpostgresql");
        assert_eq!(t.parsed.host_raw, "");
        let t = parse_database_url("postgres://u:p%40ss@h:1/d").unwrap();
        assert_eq!(
            (t.url.as_str(), t.password.as_deref()),
            ("postgres://u:p%40ss@h:1/d", Some("p@ss"))
        );
        assert!(parse_database_url("host=a,b").is_err());
    }

    #[test]
    fn messages_never_show_the_database_url_password() {
        for url in [
            "postgres://u:hunter2@h:notaport/d",
            "postgres://u:hun@ter2@h:notaport/d",
            "postgresql://u:hunter2@a,b/d",
            "mysql://u:hunter2@h/d",
            "postgres://u@h:notaport/d?password=hunter2",
            "host=h port=notaport password=hunter2",
            "host=h password='hunter2",
            "password=hun ter2",
            "host=a,b password=hunter2",
        ] {
            let e = parse_database_url(url).expect_err(url).to_string();
            assert!(!e.contains("hunter2") && !e.contains("ter2"), "{e}");
            assert!(e.contains("DATABASE_URL"), "{e}");
        }
        assert_eq!(
            redact("postgres://u:p@ss@h/d?password=x&a=b"),
            "postgres://u:***@h/d?password=***&a=b"
        );
        assert_eq!(redact("host=h password='a b' port=1"), "host=h password=*** port=1");
        let server = TestServer {
            url: "postgres://postgres:hunter2@h:1/d?password=hunter2".into(),
            password: Some("hunter2".into()),
            roles_claim: None,
            host_raw: "h".into(),
            port: 1,
            dbname: "d".into(),
            query: "?password=hunter2".into(),
            auth_roles: false,
            version: OnceLock::new(),
            certs: None,
            owned: None,
        };
        let debug = format!("{server:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("postgres:***@h:1"), "{debug}");
        assert_eq!(server.scrub("FATAL: bad hunter2"), "FATAL: bad ***");
    }

    fn role_names(server: &TestServer) -> String {
        let sql = "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'duet\\_%'";
        let out = server
            .psql_command(&server.url)
            .args(["-A", "-t", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Attaching to a server as `DATABASE_URL` (here a private cluster, so
    /// the shared one is not disturbed): roles created by the attach go with
    /// the last attached `TestServer`; roles that were there before stay.
    #[test]
    fn roles_created_on_a_database_url_server_are_dropped_with_it() {
        if !own_server() {
            return; // needs a cluster of its own to drop roles on
        }
        let host = TestServer::launch().unwrap_or_else(|e| panic!("{e}"));
        let all = "duet_clear,duet_md5,duet_scram,duet_trust";
        assert_eq!(role_names(&host), all);
        host.psql("DROP OWNED BY duet_trust, duet_clear, duet_md5, duet_scram; DROP ROLE duet_trust, duet_clear, duet_md5, duet_scram")
            .unwrap();
        assert_eq!(role_names(&host), "");
        // key=value form on purpose.
        let kv = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", host.port());
        let a = TestServer::external(kv.clone()).unwrap();
        assert!(a.auth_roles_available(), "roles work on the attached server");
        let b = TestServer::external(a.url()).unwrap();
        assert!(b.auth_roles_available());
        assert_eq!(role_names(&host), all);
        drop(a);
        assert_eq!(role_names(&host), all, "b still uses them");
        drop(b);
        assert_eq!(
            role_names(&host),
            "",
            "created by this process, dropped with the last holder"
        );
        // Roles that existed before attaching are not ours to drop.
        host.psql(ROLES_SQL).unwrap();
        let c = TestServer::external(kv).unwrap();
        assert!(c.auth_roles_available());
        drop(c);
        assert_eq!(role_names(&host), all);
    }

    /// `version()` is what `DUET_PG` asked for, and what the server binary
    /// itself says it is.
    #[test]
    fn version_is_the_selected_one() {
        if !own_server() {
            return; // DATABASE_URL's server is whatever it is
        }
        let version = TestServer::shared().version();
        let bins = Bins::server().unwrap();
        let out = bins.command("postgres").arg("--version").output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        let major: u32 = said
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("postgres --version said {said:?}"));
        assert_eq!(version, major, "{said}");
        if let Some(wanted) = bins.wanted {
            assert_eq!(version, wanted);
        }
        eprintln!("server version {version} ({})", said.trim());
    }

    /// Polls `sql` on `server` until it answers `want` (replication is
    /// asynchronous).
    fn wait_for_value(server: &TestServer, sql: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = server.psql_value(sql);
            if got.as_deref().ok() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql} never answered {want:?}; last: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    const STANDBY_SETTINGS: &str = "SELECT current_setting('in_hot_standby') || ',' || \
         current_setting('default_transaction_read_only') || ',' || current_setting('transaction_read_only')";

    /// A replica follows its primary, refuses writes until promoted, then
    /// takes them; dropping it stops it and removes its directory.
    #[test]
    fn replica_follows_refuses_writes_and_promotes() {
        let primary = TestServer::launch().unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        let replica = primary.start_replica().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("start_replica took {:?}", t.elapsed());
        assert_ne!(replica.port(), primary.port());
        assert_eq!(replica.version(), primary.version());
        assert!(replica.in_recovery().unwrap());
        assert!(!primary.in_recovery().unwrap());

        primary
            .psql("CREATE TABLE replicated (x int); INSERT INTO replicated VALUES (1)")
            .unwrap();
        wait_for_value(&replica, "SELECT count(*) FROM replicated", "1");
        // The walreceiver runs on the install's own libpq (the PostgreSQL 18
        // build reaches it only through LD_LIBRARY_PATH; Debian's libpq 15
        // would choke on the `sslnegotiation` pg_basebackup 18 writes into
        // primary_conninfo).
        let wal_receiver = replica.psql_value("SELECT pid FROM pg_stat_wal_receiver").unwrap();
        let maps = fs::read_to_string(format!("/proc/{wal_receiver}/maps")).unwrap();
        let libpq: Vec<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.contains("/libpq.so"))
            .collect();
        eprintln!("walreceiver {wal_receiver} loaded {:?}", libpq.first());
        assert!(!libpq.is_empty(), "walreceiver {wal_receiver} has no libpq mapped");
        if let Some(lib) = &Bins::server().unwrap().lib_dir {
            assert!(libpq.iter().all(|p| Path::new(p).starts_with(lib)), "{libpq:?}");
        }
        // Roles replicate too: an auth role logs in on the replica.
        assert_eq!(
            login(&replica, &replica.url_for(AuthRole::Scram), None),
            Ok("duet_scram".to_string())
        );

        let err = replica
            .psql("INSERT INTO replicated VALUES (2)")
            .expect_err("a standby took a write");
        assert!(err.to_string().contains("read-only transaction"), "{err}");
        let on_primary = primary.psql_value(STANDBY_SETTINGS).unwrap();
        let on_replica = replica.psql_value(STANDBY_SETTINGS).unwrap();
        eprintln!("in_hot_standby,default_transaction_read_only,transaction_read_only: primary {on_primary}, replica {on_replica}");
        assert_eq!(on_primary, "off,off,off");
        assert_eq!(on_replica, "on,off,on");

        let t = Instant::now();
        replica.promote().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("promote took {:?}", t.elapsed());
        assert!(!replica.in_recovery().unwrap());
        replica.psql("INSERT INTO replicated VALUES (2)").unwrap();
        assert_eq!(replica.psql_value("SELECT count(*) FROM replicated").unwrap(), "2");
        let promoted = replica.psql_value(STANDBY_SETTINGS).unwrap();
        eprintln!("after promote: {promoted}");
        assert_eq!(promoted, "off,off,off");

        let dir = replica.socket_dir().unwrap();
        let pid = postmaster_pid(&dir);
        drop(replica);
        assert!(!dir.exists(), "replica dir left behind");
        assert!(!alive(pid), "replica postmaster {pid} still running after drop");
    }

    #[test]
    fn shared_replica_follows_the_shared_server() {
        if !own_server() {
            return; // no replica of DATABASE_URL's server
        }
        let primary = TestServer::shared();
        let replica = TestServer::shared_replica();
        assert!(replica.in_recovery().unwrap());
        primary
            .psql("CREATE TABLE IF NOT EXISTS duet_harness_replica_check (x int)")
            .unwrap();
        wait_for_value(
            replica,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'duet_harness_replica_check'",
            "1",
        );
    }

    #[test]
    fn replica_needs_a_harness_started_primary() {
        let external = TestServer {
            url: "postgres://postgres@127.0.0.1:1/postgres".into(),
            password: None,
            roles_claim: None,
            host_raw: "127.0.0.1".into(),
            port: 1,
            dbname: "postgres".into(),
            query: String::new(),
            auth_roles: false,
            version: OnceLock::new(),
            certs: None,
            owned: None,
        };
        let err = external
            .start_replica()
            .expect_err("a replica of a server we do not own");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        assert!(external.promote().is_err());
    }

    fn postmaster_pid(dir: &Path) -> u32 {
        let pidfile = fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
        pidfile.lines().next().unwrap().trim().parse().unwrap()
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
            && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    }

    /// Env var that turns `watchdog_child` on (it is `#[ignore]`d otherwise).
    const CHILD_ENV: &str = "DUET_HARNESS_WATCHDOG_CHILD";

    /// Helper for `watchdog_cleans_up_after_sigkill`: starts the shared
    /// server, prints where it lives, then SIGKILLs its own process.
    #[test]
    #[ignore = "helper process for watchdog_cleans_up_after_sigkill"]
    fn watchdog_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let server = TestServer::shared();
        let dir = server.socket_dir().unwrap();
        println!("DUET_CHILD dir={} pid={}", dir.display(), postmaster_pid(&dir));
        let _ = Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn watchdog_cleans_up_after_sigkill() {
        if !own_server() {
            return;
        }
        // Test path without the crate name, e.g. `server::tests::watchdog_child`.
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("{module}::watchdog_child"),
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::null())
            .output() // returns only once every holder of the pipe is gone
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("DUET_CHILD "))
            .unwrap_or_else(|| {
                panic!(
                    "child printed no server info: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let (dir, pid) = line.split_once(" pid=").unwrap();
        let dir = PathBuf::from(dir.strip_prefix("dir=").unwrap());
        let pid: u32 = pid.parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while (dir.exists() || alive(pid)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(pid), "postmaster {pid} survived its test process");
        assert!(!dir.exists(), "{} survived its test process", dir.display());
    }
}
