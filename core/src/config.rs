//! Connection settings and the two connection-string forms libpq users know:
//! `postgres://user:pass@host:port/db?opt=v` and `host=… port=… dbname=…`.
//! Parsing is pure, so it lives here and both drivers share it.

use std::time::Duration;

use crate::Error;

/// Where to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Host name or IP address, reached over TCP.
    Tcp(String),
    /// Directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Unix(String),
}

/// Everything needed to open a session. Its `Debug` output never shows
/// the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    /// Command-line options for the backend, e.g. `-c search_path=app`.
    pub options: Option<String>,
    /// Limit on establishing the session (socket connect plus startup).
    pub connect_timeout: Option<Duration>,
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
    /// application takes them; the oldest are dropped past this.
    pub event_capacity: usize,
    /// Where to look for the server's Unix socket when `host` names this
    /// machine (`localhost`, `127.0.0.1`, `::1`): a socket file for the
    /// port found there is used instead of TCP, which saves the TCP stack's
    /// work on every round trip; if it is missing or the session cannot
    /// start over it, TCP is used as configured. Empty: always TCP
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
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .field("max_message_size", &self.max_message_size)
            .field("cancel_grace", &self.cancel_grace)
            .field("event_capacity", &self.event_capacity)
            .field("local_socket_dirs", &self.local_socket_dirs)
            .finish()
    }
}

/// How long a driver's `close` tries to hand its last bytes (Terminate) to
/// a server that does not read them, before it gives up.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Where Debian, Red Hat and source builds of PostgreSQL put the socket.
const LOCAL_SOCKET_DIRS: [&str; 3] = ["/run/postgresql", "/var/run/postgresql", "/tmp"];

impl Default for Config {
    fn default() -> Config {
        Config {
            host: Host::Tcp("localhost".into()),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: None,
            application_name: None,
            options: None,
            connect_timeout: None,
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
    /// `key=value` string.
    ///
    /// ```
    /// use duet_core::{Config, Host};
    /// let c = Config::parse("postgres://app:s3cret@db.local:6432/shop?application_name=web").unwrap();
    /// assert_eq!(c.host, Host::Tcp("db.local".into()));
    /// assert_eq!((c.port, c.user.as_str(), c.password.as_deref()), (6432, "app", Some("s3cret")));
    /// let k = Config::parse("host=/var/run/postgresql user=app dbname='my db'").unwrap();
    /// assert_eq!(k.host, Host::Unix("/var/run/postgresql".into()));
    /// assert_eq!(k.dbname.as_deref(), Some("my db"));
    /// ```
    pub fn parse(s: &str) -> Result<Config, Error> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        {
            parse_url(rest)
        } else if s.contains("://") {
            Err(Error::config(format!(
                "unsupported URL scheme in {:?}: use postgres:// or postgresql://",
                redact(s)
            )))
        } else {
            parse_key_values(s)
        }
    }

    /// The socket file for a `Host::Unix` directory.
    pub fn unix_socket_path(&self, dir: &str) -> String {
        format!("{}/.s.PGSQL.{}", dir.trim_end_matches('/'), self.port)
    }

    /// The local Unix socket to try before the configured host (see
    /// [`Config::local_socket_dirs`]): when `host` names this machine and
    /// `socket_exists` finds the socket file — the driver checks, the core
    /// does no I/O. A driver that cannot connect or start the session over
    /// it falls back to this configuration unchanged.
    ///
    /// ```
    /// use duet_core::{Config, Host};
    /// let c = Config::parse("host=localhost port=5433").unwrap();
    /// let local = c.local_route(|path| path == "/var/run/postgresql/.s.PGSQL.5433").unwrap();
    /// assert_eq!(local.host, Host::Unix("/var/run/postgresql".into()));
    /// assert_eq!(c.host, Host::Tcp("localhost".into()));
    /// let off = Config::parse("host=localhost local_socket=disable").unwrap();
    /// assert!(off.local_route(|_| true).is_none());
    /// ```
    pub fn local_route(&self, socket_exists: impl Fn(&str) -> bool) -> Option<Config> {
        let local =
            matches!(&self.host, Host::Tcp(h) if matches!(h.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]"));
        if !local {
            return None;
        }
        let dir = self
            .local_socket_dirs
            .iter()
            .find(|d| socket_exists(&self.unix_socket_path(d)))?;
        Some(Config {
            host: Host::Unix(dir.clone()),
            ..self.clone()
        })
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

    /// The error a driver reports when the socket cannot be opened: an
    /// [`Error::Connect`] naming where it tried (`127.0.0.1:5432`, `[::1]:5432`
    /// or `the Unix socket /run/postgresql/.s.PGSQL.5432`), with `e` as its
    /// `source()`.
    ///
    /// ```
    /// use duet_core::{Config, Error};
    /// let c = Config::parse("host=127.0.0.1 port=5433").unwrap();
    /// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let e = c.connect_error(refused);
    /// assert!(matches!(&e, Error::Connect { target, .. } if &**target == "127.0.0.1:5433"));
    /// assert!(e.to_string().starts_with("cannot connect to 127.0.0.1:5433: "), "{e}");
    /// ```
    pub fn connect_error(&self, e: std::io::Error) -> Error {
        let target = match &self.host {
            Host::Tcp(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => format!("the Unix socket {}", self.unix_socket_path(dir)),
        };
        Error::Connect {
            target: target.into(),
            source: std::sync::Arc::new(e),
        }
    }

    /// Applies one libpq-style option by name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        match key {
            "host" => {
                self.host = if value.starts_with('/') {
                    Host::Unix(value.into())
                } else {
                    Host::Tcp(value.into())
                }
            }
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| Error::config(format!("port {value:?} is not a number from 1 to 65535")))?
            }
            "user" => self.user = value.into(),
            "password" => self.password = Some(value.into()),
            "dbname" => self.dbname = Some(value.into()),
            "application_name" => self.application_name = Some(value.into()),
            "options" => self.options = Some(value.into()),
            "connect_timeout" => {
                let secs: u64 = value.parse().map_err(|_| {
                    Error::config(format!("connect_timeout {value:?} is not a whole number of seconds"))
                })?;
                // libpq treats 0 as "wait forever".
                self.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
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
            // Accepted for compatibility with libpq strings; duet speaks
            // plaintext only, so anything demanding TLS is refused.
            "sslmode" => {
                if !matches!(value, "disable" | "allow" | "prefer") {
                    return Err(Error::config(format!(
                        "sslmode={value} needs TLS, which duet does not support yet"
                    )));
                }
            }
            other => {
                return Err(Error::config(format!("unknown connection option {other:?}")));
            }
        }
        Ok(())
    }
}

fn redact(s: &str) -> String {
    // Never echo a password back in an error message: everything between
    // the scheme and the last '@' goes (a password may itself hold '@').
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if a < b => format!("{}://***{}", &s[..a], &s[b..]),
        _ => s.to_string(),
    }
}

fn parse_url(rest: &str) -> Result<Config, Error> {
    let mut c = Config::default();
    // The user info ends at the last '@' before the first '/': like libpq, a
    // '?' (and here also an '@') may appear unencoded in a password, since
    // neither can appear in a host name. A '/' there must be percent-encoded.
    let head = &rest[..rest.find('/').unwrap_or(rest.len())];
    if let Some((_, after_slash)) = rest.split_once('/') {
        if after_slash.split('?').next().is_some_and(|path| path.contains('@')) {
            // Most likely `user:pa/ss@host`: the password would land in the
            // host, port and database name. Refuse without echoing any of it.
            return Err(Error::config(
                "the URL has an '@' after its first '/': a '/' in the user name or password must be \
                 percent-encoded as %2F (and an '@' in the database name as %40)",
            ));
        }
    }
    let (userinfo, after) = match head.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (before_query, query) = match after.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (after, None),
    };
    let (hostport, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    if let Some(u) = userinfo {
        let (user, pass) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        if !user.is_empty() {
            c.user = percent_decode(user, "user name")?;
        }
        if let Some(p) = pass {
            c.password = Some(percent_decode(p, "password")?);
        }
    }
    if !hostport.is_empty() {
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| Error::config("unterminated [ in IPv6 host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h, "host")?, Some(p)),
                None => (percent_decode(hostport, "host")?, None),
            }
        };
        if !host.is_empty() {
            c.set("host", &host)?;
        }
        if let Some(p) = port {
            // Not quoted: with a mistyped URL this text can be a password.
            c.port = p
                .parse()
                .map_err(|_| Error::config("the URL's port is not a number from 1 to 65535"))?;
        }
    }
    if let Some(p) = path {
        if !p.is_empty() {
            c.dbname = Some(percent_decode(p, "database name")?);
        }
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::config("an option after the URL's '?' has no '=' (write name=value)"))?;
            let k = percent_decode(k, "URL option name")?;
            let v = percent_decode(v, &format!("value of URL option {k:?}"))?;
            c.set(&k, &v)?;
        }
    }
    Ok(c)
}

/// Decodes `%XX` escapes. `what` names the part in errors, which never
/// quote the password (or any other part, so the message is the same for
/// all of them).
fn percent_decode(s: &str, what: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::config(format!(
                        "bad percent-escape in the URL's {what}: '%' must be followed by two hex digits"
                    ))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config(format!("the URL's {what} is not UTF-8 after percent-decoding")))
}

fn parse_key_values(s: &str) -> Result<Config, Error> {
    let mut c = Config::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&ch) = chars.peek() {
            if ch == '=' || ch.is_whitespace() {
                break;
            }
            key.push(ch);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::config(format!("option {key:?} has no '=' and value")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(e) => value.push(e),
                        None => return Err(Error::config("dangling backslash in quoted value")),
                    },
                    Some('\'') => break,
                    Some(ch) => value.push(ch),
                    None => return Err(Error::config(format!("unterminated quote in value of {key:?}"))),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                chars.next();
                if ch == '\\' {
                    if let Some(e) = chars.next() {
                        value.push(e);
                    }
                } else {
                    value.push(ch);
                }
            }
        }
        c.set(&key, &value)?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let c = Config::parse("postgresql://u%40x:p%3Aw@[::1]:7/d%20b?options=-c%20a%3Db&statement_cache_capacity=0")
            .unwrap();
        assert_eq!(c.user, "u@x");
        assert_eq!(c.password.as_deref(), Some("p:w"));
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.port, 7);
        assert_eq!(c.dbname.as_deref(), Some("d b"));
        assert_eq!(c.options.as_deref(), Some("-c a=b"));
        assert_eq!(c.statement_cache_capacity, 0);
        let h = Config::parse("postgres://%2Ftmp%2Fsock/db").unwrap();
        assert_eq!(h.host, Host::Unix("/tmp/sock".into()));
    }

    #[test]
    fn key_value_forms() {
        let c = Config::parse("host=h port = 99 password='it\\'s' connect_timeout=3").unwrap();
        assert_eq!(c.host, Host::Tcp("h".into()));
        assert_eq!(c.port, 99);
        assert_eq!(c.password.as_deref(), Some("it's"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn errors_name_the_problem_and_hide_passwords() {
        let e = Config::parse("port=abc").unwrap_err().to_string();
        assert!(e.contains("port \"abc\""), "{e}");
        let e = Config::parse("mysql://u:secret@h/d").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(Config::parse("bogus=1").unwrap_err().to_string().contains("bogus"));
        assert!(Config::parse("host='x").is_err());
        assert!(Config::parse("sslmode=require").is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Config::parse("postgres://app:hunter2@db.local:6432/shop").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains(r#"password: Some("<redacted>")"#), "{d}");
        assert!(
            d.contains(r#"user: "app""#) && d.contains("port: 6432") && d.contains("shop"),
            "{d}"
        );
        let none = format!("{:?}", Config::parse("host=h").unwrap());
        assert!(none.contains("password: None"), "{none}");
    }

    #[test]
    fn bad_escape_in_the_password_is_named_not_echoed() {
        let e = Config::parse("postgres://u:p%zzsecret@h/db").unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        let e = e.to_string();
        assert!(!e.contains("secret") && !e.contains("zz"), "{e}");
        assert!(e.contains("percent-escape") && e.contains("password"), "{e}");
        let e = Config::parse("postgres://u:%C3secret@h/db").unwrap_err().to_string();
        assert!(!e.contains("secret") && e.contains("password"), "{e}");
        let e = Config::parse("postgres://u@h/db?password=p%zzsecret")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn reserved_characters_stay_in_the_password() {
        // Percent-encoded '/', '?', '@', ':'.
        let c = Config::parse("postgres://u:a%2Fb%3Fc%40d%3Ae@h:6000/db?application_name=x").unwrap();
        assert_eq!(c.password.as_deref(), Some("a/b?c@d:e"));
        assert_eq!((c.host.clone(), c.port), (Host::Tcp("h".into()), 6000));
        assert_eq!(c.dbname.as_deref(), Some("db"));
        assert_eq!(c.application_name.as_deref(), Some("x"));
        // Unencoded '@' and '?' (the user info ends at the last '@').
        let c = Config::parse("postgres://u:p@ss?w@rd@h:6000/db?application_name=x").unwrap();
        assert_eq!(c.user, "u");
        assert_eq!(c.password.as_deref(), Some("p@ss?w@rd"));
        assert_eq!((c.host.clone(), c.port), (Host::Tcp("h".into()), 6000));
        assert_eq!(c.dbname.as_deref(), Some("db"));
        assert_eq!(c.application_name.as_deref(), Some("x"));
        let c = Config::parse("postgres://u:p?x@h").unwrap();
        assert_eq!((c.password.as_deref(), c.host), (Some("p?x"), Host::Tcp("h".into())));
        // A ':' in the password is its own: only the first separates the user.
        let c = Config::parse("postgres://u:a:b@h/db").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_deref()), ("u", Some("a:b")));
        // '@' in option values after the path is fine.
        let c = Config::parse("postgres://h/db?application_name=me@home").unwrap();
        assert_eq!(c.application_name.as_deref(), Some("me@home"));
        assert_eq!(c.password, None);
    }

    #[test]
    fn an_unencoded_slash_in_the_password_is_refused_without_echo() {
        for url in [
            "postgres://u:sec/ret@h/db",
            "postgres://u:12/secret@h/db",
            "postgres://u:p@s/secret@h/db",
        ] {
            let e = Config::parse(url).unwrap_err().to_string();
            assert!(!e.contains("sec") && !e.contains("ret"), "{url}: {e}");
            assert!(e.contains("%2F"), "{url}: {e}");
        }
        // A '/' then '?' then '@' cannot be told apart from a query; still
        // nothing of the password is quoted.
        let e = Config::parse("postgres://u:secret/x?y@h").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        let e = Config::parse("postgres://u:a/b?secret@h").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        let e = Config::parse("postgres://u:a/b?sec@ret@h/db").unwrap_err().to_string();
        assert!(!e.contains("sec") && !e.contains("ret"), "{e}");
        let e = Config::parse("postgres://u:se/cret?secret@h").unwrap_err().to_string();
        assert!(!e.contains("secret") && !e.contains("cret"), "{e}");
    }

    #[test]
    fn connect_errors_name_the_target_and_keep_the_io_error() {
        use std::error::Error as _;
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let target = |s: &str| match Config::parse(s).unwrap().connect_error(refused()) {
            Error::Connect { target, source } => {
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
                target.to_string()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(target("host=127.0.0.1 port=5433"), "127.0.0.1:5433");
        assert_eq!(target("postgres://[::1]:7/db"), "[::1]:7");
        assert_eq!(target("host=/tmp port=5433"), "the Unix socket /tmp/.s.PGSQL.5433");
        let e = Config::parse("host=db.local port=6432")
            .unwrap()
            .connect_error(refused());
        assert!(e.is_fatal());
        assert_eq!(e.to_string(), format!("cannot connect to db.local:6432: {}", refused()));
        let src = e
            .source()
            .expect("source")
            .downcast_ref::<std::io::Error>()
            .expect("io::Error");
        assert_eq!(src.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
