//! Connection settings, with libpq's words and meanings: several hosts,
//! `target_session_attrs`, TLS (`sslmode` and friends), keepalives, protocol
//! versions. [`Config::parse`] reads a connection string alone (pure);
//! [`Config::from_env`] does what libpq does — the `PG*` environment under
//! the string, then the operating system's user and the files in the home
//! directory. Both drivers share all of it.

use core::net::IpAddr;
use std::time::Duration;

use crate::Error;

mod env;
mod parse;
pub mod passfile;

pub use env::{EnvSource, SystemEnv};

/// Where to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Host name or IP address, reached over TCP.
    Tcp(String),
    /// Directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Unix(String),
}

impl Host {
    fn parse(value: &str) -> Host {
        if value.starts_with('/') {
            Host::Unix(value.into())
        } else if value.is_empty() {
            Host::Tcp("localhost".into())
        } else {
            Host::Tcp(value.into())
        }
    }
}

/// One server to try: a host (its name is what TLS verifies and what the
/// password file matches), the address to dial instead of resolving the
/// name (`hostaddr`), and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Endpoint {
    /// The socket file of a `Host::Unix` directory.
    pub fn unix_socket_path(&self, dir: &str) -> String {
        format!("{}/.s.PGSQL.{}", dir.trim_end_matches('/'), self.port)
    }

    /// The error a driver reports when the socket cannot be opened: an
    /// [`Error::Connect`] naming where it tried (`127.0.0.1:5432`, `[::1]:5432`
    /// or `the Unix socket /run/postgresql/.s.PGSQL.5432`), with `e` as its
    /// `source()`.
    ///
    /// ```
    /// use duet_core::{Config, Error};
    /// let c = Config::parse("host=127.0.0.1 port=5433").unwrap();
    /// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let e = c.endpoints().unwrap()[0].connect_error(refused);
    /// assert!(matches!(&e, Error::Connect { target, .. } if &**target == "127.0.0.1:5433"));
    /// assert!(e.to_string().starts_with("cannot connect to 127.0.0.1:5433: "), "{e}");
    /// ```
    pub fn connect_error(&self, e: std::io::Error) -> Error {
        Error::Connect {
            target: self.to_string().into(),
            source: std::sync::Arc::new(e),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.host, self.hostaddr) {
            (Host::Unix(dir), _) => write!(f, "the Unix socket {}", self.unix_socket_path(dir)),
            (Host::Tcp(h), Some(a)) if h != &a.to_string() => match a {
                IpAddr::V6(_) => write!(f, "{h} ([{a}]:{})", self.port),
                IpAddr::V4(_) => write!(f, "{h} ({a}:{})", self.port),
            },
            (Host::Tcp(h), _) if h.contains(':') && !h.starts_with('[') => write!(f, "[{h}]:{}", self.port),
            (Host::Tcp(h), _) => write!(f, "{h}:{}", self.port),
        }
    }
}

/// `sslmode`, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS if the server refuses a plaintext session.
    Allow,
    /// TLS if the server offers it, else plaintext (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is verified only when a root
    /// certificate is given (`sslrootcert`, or `~/.postgresql/root.crt`), as
    /// libpq does.
    Require,
    /// TLS with the server's certificate chain verified.
    VerifyCa,
    /// TLS with the chain verified and the host name matched.
    VerifyFull,
}

/// `sslnegotiation`: how TLS starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslNegotiation {
    /// SSLRequest first, then the handshake (every server).
    Postgres,
    /// The TLS handshake at once, with ALPN `postgresql` (PostgreSQL 17+;
    /// one round trip less).
    Direct,
}

/// `channel_binding`: whether SCRAM binds the session to the TLS channel
/// (SCRAM-SHA-256-PLUS), which defeats a man in the middle that holds a
/// certificate the client accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    Disable,
    /// Used when the session is TLS and the server offers it.
    Prefer,
    /// Refuse any authentication without it (md5, password, trust, plain SCRAM).
    Require,
}

/// `target_session_attrs`: which server of the list is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    Any,
    /// Accepts writes by default (`default_transaction_read_only` off, not a standby).
    ReadWrite,
    /// The opposite of read-write.
    ReadOnly,
    /// Not a hot standby.
    Primary,
    /// A hot standby.
    Standby,
    /// A standby if one of the hosts is, else any.
    PreferStandby,
}

/// `load_balance_hosts`: the order hosts are tried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalanceHosts {
    /// As listed.
    Disable,
    /// Shuffled for each connection.
    Random,
}

/// A protocol version (3.0 everywhere; 3.2 on PostgreSQL 18+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };
    pub const V3_2: ProtocolVersion = ProtocolVersion { major: 3, minor: 2 };
    /// The newest version duet speaks.
    pub const LATEST: ProtocolVersion = ProtocolVersion::V3_2;

    /// The version word of a StartupMessage.
    pub fn code(self) -> i32 {
        ((self.major as i32) << 16) | self.minor as i32
    }

    fn parse(word: &str, value: &str) -> Result<ProtocolVersion, Error> {
        match value {
            "3.0" => Ok(ProtocolVersion::V3_0),
            "3.2" => Ok(ProtocolVersion::V3_2),
            "latest" => Ok(ProtocolVersion::LATEST),
            _ => Err(Error::config(format!("{word} {value:?} is not 3.0, 3.2 or latest"))),
        }
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The TLS versions `ssl_min_protocol_version` / `ssl_max_protocol_version`
/// may name (rustls speaks 1.2 and 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Everything needed to open a session. Its `Debug` output never shows
/// the password.
///
/// Host, port and hostaddr are libpq's comma-separated lists: empty means
/// the default (`localhost`, 5432, none), one port applies to every host.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub host: Vec<Host>,
    pub hostaddr: Vec<Option<IpAddr>>,
    pub port: Vec<u16>,
    pub user: String,
    pub password: Option<String>,
    /// The password file (`passfile`, `PGPASSFILE`, `~/.pgpass` under
    /// [`Config::from_env`]), read when connecting if no password is set.
    /// Ignored, as libpq does, when others than its owner may read it.
    pub passfile: Option<String>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    /// `application_name` when none is set.
    pub fallback_application_name: Option<String>,
    /// Command-line options for the backend, e.g. `-c search_path=app`.
    pub options: Option<String>,
    /// Limit on establishing a session with one host (socket connect, TLS,
    /// startup); each host of a list has its own.
    pub connect_timeout: Option<Duration>,
    /// `sslmode`; `None` means libpq's default: `prefer`, or `verify-full`
    /// with `sslrootcert=system`. See [`Config::ssl_mode`].
    pub ssl_mode: Option<SslMode>,
    pub ssl_negotiation: SslNegotiation,
    /// A file of trusted root certificates (PEM), or `system` for the
    /// platform's store.
    pub ssl_root_cert: Option<String>,
    /// Client certificate chain and key (PEM) for pg_hba `cert` or
    /// `clientcert=verify-full`.
    pub ssl_cert: Option<String>,
    pub ssl_key: Option<String>,
    /// Send the host name in TLS SNI (`sslsni`, on by default).
    pub ssl_sni: bool,
    pub ssl_min_protocol_version: TlsVersion,
    pub ssl_max_protocol_version: TlsVersion,
    pub channel_binding: ChannelBindingMode,
    pub target_session_attrs: TargetSessionAttrs,
    pub load_balance_hosts: LoadBalanceHosts,
    pub min_protocol_version: ProtocolVersion,
    /// `max_protocol_version`; `None` (the default) asks for the newest and
    /// falls back to 3.0 with a server or pooler that refuses the newer
    /// StartupMessage outright (PgBouncer before 1.22 does). See
    /// [`Config::max_protocol_version`].
    pub max_protocol_version: Option<ProtocolVersion>,
    /// TCP keepalives (`keepalives`, on by default as in libpq) and their
    /// timing; `None` leaves the operating system's value.
    pub keepalives: bool,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
    /// `tcp_user_timeout` (Linux): how long sent data may stay unacknowledged
    /// before the kernel drops the connection.
    pub tcp_user_timeout: Option<Duration>,
    /// Named prepared statements kept per connection (LRU). 0 means unnamed
    /// statements only, which is what PgBouncer's transaction mode needs.
    pub statement_cache_capacity: usize,
    /// Largest message accepted from the server, checked before any buffer
    /// grows. The server can send up to 1 GiB in one message; the default,
    /// 256 MiB, guards memory while covering every ordinary row.
    pub max_message_size: usize,
    /// How long after asking to cancel a timed-out request the connection
    /// waits for the server before it gives up and closes
    /// (`cancel_grace_ms=…` in a connection string; default 5 s).
    pub cancel_grace: Duration,
    /// Notices, notifications and parameter changes kept until the
    /// application takes them; the oldest are dropped past this
    /// (`event_capacity=…` in a connection string; default 1,024).
    pub event_capacity: usize,
    /// Where to look for the server's Unix socket when a host names this
    /// machine (`localhost`, `127.0.0.1`, `::1`) and TLS is not demanded
    /// (`sslmode` disable, allow or prefer): a socket file for the port
    /// found there is used instead of TCP, which saves the TCP stack's work
    /// on every round trip; if it is missing or the session cannot start
    /// over it, TCP is used as configured. Empty: always TCP
    /// (`local_socket=disable`). Beware a server reached through a port
    /// mapping (a container) while another listens on the local socket:
    /// disable this there.
    pub local_socket_dirs: Vec<String>,
    /// Whether a top-level transaction learns its id on the way
    /// (`txid_current_if_assigned()`, PostgreSQL 10+) so that a COMMIT whose
    /// answer is lost with the connection can be looked up
    /// (`commit_lookup=off` in a connection string turns it off, for a
    /// server that claims PostgreSQL's version without its functions).
    pub commit_lookup: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Written out so that a logged Config (or anything holding one, such
        // as a driver's CancelToken) cannot leak the password.
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("ssl_mode", &self.ssl_mode())
            .field("ssl_negotiation", &self.ssl_negotiation)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_cert", &self.ssl_cert)
            .field("ssl_key", &self.ssl_key)
            .field("channel_binding", &self.channel_binding)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("load_balance_hosts", &self.load_balance_hosts)
            .field(
                "protocol_versions",
                &(self.min_protocol_version, self.max_protocol_version()),
            )
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .field("max_message_size", &self.max_message_size)
            .field("cancel_grace", &self.cancel_grace)
            .field("event_capacity", &self.event_capacity)
            .field("local_socket_dirs", &self.local_socket_dirs)
            .finish_non_exhaustive()
    }
}

/// How long a driver's `close` tries to hand its last bytes (Terminate) to
/// a server that does not read them, before it gives up.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Where Debian, Red Hat and source builds of PostgreSQL put the socket.
const LOCAL_SOCKET_DIRS: [&str; 3] = ["/run/postgresql", "/var/run/postgresql", "/tmp"];

const DEFAULT_PORT: u16 = 5432;

/// Whether `dir` is where a distribution's server puts its socket by
/// default (what libpq's password file lookup calls "localhost").
pub(crate) fn is_default_socket_dir(dir: &str) -> bool {
    LOCAL_SOCKET_DIRS.contains(&dir.trim_end_matches('/'))
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: Vec::new(),
            hostaddr: Vec::new(),
            port: Vec::new(),
            user: "postgres".into(),
            password: None,
            passfile: None,
            dbname: None,
            application_name: None,
            fallback_application_name: None,
            options: None,
            connect_timeout: None,
            ssl_mode: None,
            ssl_negotiation: SslNegotiation::Postgres,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            ssl_sni: true,
            ssl_min_protocol_version: TlsVersion::Tls12,
            ssl_max_protocol_version: TlsVersion::Tls13,
            channel_binding: ChannelBindingMode::Prefer,
            target_session_attrs: TargetSessionAttrs::Any,
            load_balance_hosts: LoadBalanceHosts::Disable,
            min_protocol_version: ProtocolVersion::V3_0,
            max_protocol_version: None,
            keepalives: true,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            tcp_user_timeout: None,
            statement_cache_capacity: 256,
            max_message_size: 256 << 20,
            cancel_grace: Duration::from_secs(5),
            event_capacity: 1024,
            local_socket_dirs: LOCAL_SOCKET_DIRS.iter().map(|d| d.to_string()).collect(),
            commit_lookup: true,
        }
    }
}

impl std::str::FromStr for Config {
    type Err = Error;
    fn from_str(s: &str) -> Result<Config, Error> {
        Config::parse(s)
    }
}

impl Config {
    /// Parses a URL (`postgres://` or `postgresql://`) or a libpq
    /// `key=value` string — the string alone: no environment, no files
    /// (see [`Config::from_env`] for libpq's whole behaviour).
    ///
    /// ```
    /// use duet_core::{Config, Host};
    /// let c = Config::parse("postgres://app:s3cret@db.local:6432/shop?application_name=web").unwrap();
    /// assert_eq!(c.host, [Host::Tcp("db.local".into())]);
    /// assert_eq!((c.port[0], c.user.as_str(), c.password.as_deref()), (6432, "app", Some("s3cret")));
    /// let k = Config::parse("host=/var/run/postgresql user=app dbname='my db'").unwrap();
    /// assert_eq!(k.host, [Host::Unix("/var/run/postgresql".into())]);
    /// assert_eq!(k.dbname.as_deref(), Some("my db"));
    /// let several = Config::parse("postgres://a:5433,b/db?target_session_attrs=read-write").unwrap();
    /// let e = several.endpoints().unwrap();
    /// assert_eq!((e[0].to_string(), e[1].to_string()), ("a:5433".into(), "b:5432".into()));
    /// ```
    pub fn parse(s: &str) -> Result<Config, Error> {
        let mut c = Config::default();
        c.apply(s)?;
        c.endpoints()?;
        Ok(c)
    }

    /// Applies a connection string on top of this configuration.
    pub(crate) fn apply(&mut self, s: &str) -> Result<(), Error> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        {
            parse::parse_url(self, rest)
        } else if s.contains("://") {
            Err(Error::config(format!(
                "unsupported URL scheme in {:?}: use postgres:// or postgresql://",
                parse::redact(s)
            )))
        } else {
            parse::parse_key_values(self, s)
        }
    }

    /// The `sslmode` in force: as set, else `verify-full` with
    /// `sslrootcert=system` (as libpq 16+), else `prefer`.
    pub fn ssl_mode(&self) -> SslMode {
        match self.ssl_mode {
            Some(m) => m,
            None if self.ssl_root_cert.as_deref() == Some("system") => SslMode::VerifyFull,
            None => SslMode::Prefer,
        }
    }

    /// The newest protocol version asked for: as set, else the newest duet
    /// speaks (3.2; PostgreSQL before 18 answers 3.0).
    pub fn max_protocol_version(&self) -> ProtocolVersion {
        self.max_protocol_version.unwrap_or(ProtocolVersion::LATEST)
    }

    /// The servers to try, in the listed order: host, hostaddr and port
    /// lists matched up as libpq does (one port for all hosts, or one each).
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, Error> {
        let default_host = Host::Tcp("localhost".into());
        let n = self.host.len().max(self.hostaddr.len()).max(1);
        if !self.host.is_empty() && !self.hostaddr.is_empty() && self.host.len() != self.hostaddr.len() {
            return Err(Error::config(format!(
                "{} hosts but {} hostaddr values: give one hostaddr per host",
                self.host.len(),
                self.hostaddr.len()
            )));
        }
        if self.port.len() > 1 && self.port.len() != n {
            return Err(Error::config(format!(
                "{} ports for {n} hosts: give one port for all, or one per host",
                self.port.len()
            )));
        }
        Ok((0..n)
            .map(|i| {
                let hostaddr = self.hostaddr.get(i).copied().flatten();
                let host = match (self.host.get(i), hostaddr) {
                    (Some(h), _) => h.clone(),
                    // hostaddr alone: the address is also the name.
                    (None, Some(a)) => Host::Tcp(a.to_string()),
                    (None, None) => default_host.clone(),
                };
                let port = match self.port.len() {
                    0 => DEFAULT_PORT,
                    1 => self.port[0],
                    _ => self.port[i],
                };
                Endpoint { host, hostaddr, port }
            })
            .collect())
    }

    /// This configuration narrowed to one server: what a session that
    /// reached `endpoint` keeps, so that its cancels and side connections
    /// go to that server and no other.
    pub fn for_endpoint(&self, endpoint: &Endpoint) -> Config {
        let mut c = self.clone();
        c.host = vec![endpoint.host.clone()];
        c.hostaddr = vec![endpoint.hostaddr];
        c.port = vec![endpoint.port];
        c.target_session_attrs = TargetSessionAttrs::Any;
        c.load_balance_hosts = LoadBalanceHosts::Disable;
        c
    }

    /// The settings a side connection uses (the lookup of a lost commit):
    /// the same server, and a connect time limit even when the session has
    /// none (a side connection must not hang).
    pub fn for_side_connection(&self) -> Config {
        let mut c = self.clone();
        c.connect_timeout = Some(self.side_limit());
        c
    }

    /// The time limit on a side connection's whole work: `connect_timeout`,
    /// or 10 seconds when none is set.
    pub fn side_limit(&self) -> Duration {
        self.connect_timeout.unwrap_or(Duration::from_secs(10))
    }

    /// The limit on each step of a cancel sent for a timed-out request
    /// (connect, write, wait for the server to close): within the grace
    /// period, which ends the call anyway.
    pub fn cancel_limit(&self) -> Duration {
        self.side_limit().min(self.cancel_grace).max(Duration::from_millis(1))
    }

    /// Whether a session may go over this machine's Unix socket instead of
    /// the TCP endpoint given (see [`Config::local_socket_dirs`]): the host
    /// names this machine, no hostaddr redirects it, and nothing demands TLS.
    pub(crate) fn may_use_local_socket(&self, endpoint: &Endpoint) -> bool {
        let local =
            matches!(&endpoint.host, Host::Tcp(h) if matches!(h.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]"));
        local
            && endpoint.hostaddr.is_none()
            && self.ssl_mode() <= SslMode::Prefer
            && self.channel_binding != ChannelBindingMode::Require
    }

    /// Checks the words against each other before any socket is opened.
    pub fn validate(&self) -> Result<(), Error> {
        self.endpoints()?;
        let mode = self.ssl_mode();
        if self.ssl_root_cert.as_deref() == Some("system") && mode != SslMode::VerifyFull {
            return Err(Error::config(format!(
                "sslrootcert=system trusts every public authority, so it needs sslmode=verify-full (not {})",
                word_of_ssl_mode(mode)
            )));
        }
        if self.ssl_negotiation == SslNegotiation::Direct && mode < SslMode::Require {
            return Err(Error::config(format!(
                "sslnegotiation=direct starts TLS without asking, so it needs sslmode=require, verify-ca or verify-full (not {})",
                word_of_ssl_mode(mode)
            )));
        }
        if self.channel_binding == ChannelBindingMode::Require && mode == SslMode::Disable {
            return Err(Error::config(
                "channel_binding=require needs TLS, but sslmode=disable turns it off",
            ));
        }
        if self.min_protocol_version > self.max_protocol_version() {
            return Err(Error::config(format!(
                "min_protocol_version {} is above max_protocol_version {}",
                self.min_protocol_version,
                self.max_protocol_version()
            )));
        }
        if self.ssl_min_protocol_version > self.ssl_max_protocol_version {
            return Err(Error::config(
                "ssl_min_protocol_version is above ssl_max_protocol_version",
            ));
        }
        Ok(())
    }

    /// Applies one libpq-style option by name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        match key {
            "host" => self.host = value.split(',').map(Host::parse).collect(),
            "hostaddr" => {
                self.hostaddr = value
                    .split(',')
                    .map(|a| match a.trim() {
                        "" => Ok(None),
                        a => a.parse::<IpAddr>().map(Some).map_err(|_| {
                            Error::config(format!("hostaddr {a:?} is not a numeric IPv4 or IPv6 address"))
                        }),
                    })
                    .collect::<Result<_, _>>()?
            }
            "port" => {
                self.port = value
                    .split(',')
                    .map(|p| match p.trim() {
                        "" => Ok(DEFAULT_PORT),
                        p => p
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| Error::config(format!("port {p:?} is not a number from 1 to 65535"))),
                    })
                    .collect::<Result<_, _>>()?
            }
            "user" => self.user = value.into(),
            "password" => self.password = Some(value.into()),
            "passfile" => self.passfile = Some(value.into()),
            "dbname" => self.dbname = Some(value.into()),
            "application_name" => self.application_name = Some(value.into()),
            "fallback_application_name" => self.fallback_application_name = Some(value.into()),
            "options" => self.options = Some(value.into()),
            "connect_timeout" => {
                let secs: u64 = value.trim().parse().map_err(|_| {
                    Error::config(format!("connect_timeout {value:?} is not a whole number of seconds"))
                })?;
                // libpq treats 0 as "wait forever", and anything below 2 s as 2 s.
                self.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs.max(2)));
            }
            "sslmode" => {
                self.ssl_mode = Some(match value {
                    "disable" => SslMode::Disable,
                    "allow" => SslMode::Allow,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(Error::config(format!(
                            "sslmode {value:?} is not disable, allow, prefer, require, verify-ca or verify-full"
                        )))
                    }
                })
            }
            "sslnegotiation" => {
                self.ssl_negotiation = match value {
                    "postgres" => SslNegotiation::Postgres,
                    "direct" => SslNegotiation::Direct,
                    _ => return Err(Error::config(format!("sslnegotiation {value:?} is not postgres or direct"))),
                }
            }
            "sslrootcert" => self.ssl_root_cert = Some(value.into()),
            "sslcert" => self.ssl_cert = Some(value.into()),
            "sslkey" => self.ssl_key = Some(value.into()),
            "sslsni" => self.ssl_sni = flag(key, value)?,
            "ssl_min_protocol_version" | "ssl_max_protocol_version" => {
                let v = match value {
                    "TLSv1.2" => TlsVersion::Tls12,
                    "TLSv1.3" => TlsVersion::Tls13,
                    "TLSv1" | "TLSv1.1" => {
                        return Err(Error::config(format!(
                            "{key} {value}: duet's TLS (rustls) speaks TLSv1.2 and TLSv1.3 only"
                        )))
                    }
                    _ => return Err(Error::config(format!("{key} {value:?} is not TLSv1.2 or TLSv1.3"))),
                };
                if key == "ssl_min_protocol_version" {
                    self.ssl_min_protocol_version = v
                } else {
                    self.ssl_max_protocol_version = v
                }
            }
            "channel_binding" => {
                self.channel_binding = match value {
                    "disable" => ChannelBindingMode::Disable,
                    "prefer" => ChannelBindingMode::Prefer,
                    "require" => ChannelBindingMode::Require,
                    _ => {
                        return Err(Error::config(format!(
                            "channel_binding {value:?} is not disable, prefer or require"
                        )))
                    }
                }
            }
            "target_session_attrs" => {
                self.target_session_attrs = match value {
                    "any" => TargetSessionAttrs::Any,
                    "read-write" => TargetSessionAttrs::ReadWrite,
                    "read-only" => TargetSessionAttrs::ReadOnly,
                    "primary" => TargetSessionAttrs::Primary,
                    "standby" => TargetSessionAttrs::Standby,
                    "prefer-standby" => TargetSessionAttrs::PreferStandby,
                    _ => {
                        return Err(Error::config(format!(
                            "target_session_attrs {value:?} is not any, read-write, read-only, primary, standby or prefer-standby"
                        )))
                    }
                }
            }
            "load_balance_hosts" => {
                self.load_balance_hosts = match value {
                    "disable" => LoadBalanceHosts::Disable,
                    "random" => LoadBalanceHosts::Random,
                    _ => return Err(Error::config(format!("load_balance_hosts {value:?} is not disable or random"))),
                }
            }
            "min_protocol_version" => self.min_protocol_version = ProtocolVersion::parse(key, value)?,
            "max_protocol_version" => self.max_protocol_version = Some(ProtocolVersion::parse(key, value)?),
            "keepalives" => self.keepalives = flag(key, value)?,
            "keepalives_idle" => self.keepalives_idle = seconds(key, value)?,
            "keepalives_interval" => self.keepalives_interval = seconds(key, value)?,
            "keepalives_count" => {
                self.keepalives_count = match value.trim().parse::<u32>() {
                    Ok(0) => None,
                    Ok(n) => Some(n),
                    Err(_) => return Err(Error::config(format!("keepalives_count {value:?} is not a whole number"))),
                }
            }
            "tcp_user_timeout" => {
                let ms: u64 = value.trim().parse().map_err(|_| {
                    Error::config(format!("tcp_user_timeout {value:?} is not a whole number of milliseconds"))
                })?;
                self.tcp_user_timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            // duet has no GSSAPI: asking for it is refused, the rest is harmless.
            "gssencmode" => {
                if value == "require" {
                    return Err(Error::config(
                        "gssencmode=require: duet does not support GSSAPI encryption; use TLS (sslmode)",
                    ));
                }
                if !matches!(value, "disable" | "prefer" | "allow") {
                    return Err(Error::config(format!("gssencmode {value:?} is not disable, prefer or require")));
                }
            }
            "sslcertmode" => {
                if value == "require" {
                    return Err(Error::config(
                        "sslcertmode=require is not supported; sslcertmode=allow (the default) sends sslcert when the server asks",
                    ));
                }
                if value == "disable" {
                    self.ssl_cert = None;
                    self.ssl_key = None;
                } else if value != "allow" {
                    return Err(Error::config(format!("sslcertmode {value:?} is not disable or allow")));
                }
            }
            "commit_lookup" => {
                self.commit_lookup = match value {
                    "on" | "true" | "1" => true,
                    "off" | "false" | "0" => false,
                    _ => return Err(Error::config(format!("commit_lookup {value:?} is not on or off"))),
                }
            }
            "cancel_grace_ms" => {
                let ms: u64 = value.parse().map_err(|_| {
                    Error::config(format!(
                        "cancel_grace_ms {value:?} is not a whole number of milliseconds"
                    ))
                })?;
                self.cancel_grace = Duration::from_millis(ms);
            }
            "event_capacity" => {
                self.event_capacity = value
                    .parse()
                    .map_err(|_| Error::config(format!("event_capacity {value:?} is not a whole number")))?
            }
            "statement_cache_capacity" => {
                self.statement_cache_capacity = value
                    .parse()
                    .map_err(|_| Error::config(format!("statement_cache_capacity {value:?} is not a whole number")))?
            }
            "local_socket" => {
                self.local_socket_dirs = match value {
                    "disable" => Vec::new(),
                    "prefer" => LOCAL_SOCKET_DIRS.iter().map(|d| d.to_string()).collect(),
                    dir if dir.starts_with('/') => vec![dir.to_string()],
                    _ => {
                        return Err(Error::config(format!(
                            "local_socket {value:?} is not disable, prefer or a directory"
                        )))
                    }
                }
            }
            "max_message_size" => {
                self.max_message_size = value
                    .parse()
                    .map_err(|_| Error::config(format!("max_message_size {value:?} is not a whole number of bytes")))?
            }
            "sslcrl" | "sslcrldir" | "sslpassword" | "service" | "servicefile" | "requirepeer" | "krbsrvname"
            | "gsslib" | "gssdelegation" | "replication" | "require_auth" => {
                return Err(Error::config(format!(
                    "connection option {key:?} is a libpq word duet does not support yet"
                )));
            }
            other => {
                return Err(Error::config(format!("unknown connection option {other:?}")));
            }
        }
        Ok(())
    }
}

pub(crate) fn word_of_ssl_mode(m: SslMode) -> &'static str {
    match m {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn flag(key: &str, value: &str) -> Result<bool, Error> {
    match value {
        "1" | "on" | "true" => Ok(true),
        "0" | "off" | "false" => Ok(false),
        _ => Err(Error::config(format!("{key} {value:?} is not 1 or 0"))),
    }
}

fn seconds(key: &str, value: &str) -> Result<Option<Duration>, Error> {
    let secs: u64 = value
        .trim()
        .parse()
        .map_err(|_| Error::config(format!("{key} {value:?} is not a whole number of seconds")))?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests;
