//! Choosing the server, a decision and so the core's: the hosts of a
//! configuration in order (or shuffled, `load_balance_hosts=random`), each
//! with the TLS its `sslmode` asks for, the password file consulted per
//! host, and the session judged against `target_session_attrs` once it is
//! open. A driver only opens the sockets it is told to and runs
//! [`ops::startup`](crate::ops::startup) on them:
//!
//! ```ignore
//! let mut plan = Connector::new(&config)?;
//! while let Some(attempt) = plan.next_attempt() {
//!     let socket = match open(attempt.endpoint()) {
//!         Ok(s) => s,
//!         Err(e) => { plan.failed(attempt, attempt.endpoint().connect_error(e)); continue }
//!     };
//!     let mut conn = plan.start(&attempt, now());
//!     match run(&mut conn, socket, ops::startup()) {
//!         Ok(()) => return Ok(conn),
//!         Err(e) => plan.failed(attempt, e),
//!     }
//! }
//! Err(plan.into_error())
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::config::passfile::{self, Passfile};
use crate::config::{Endpoint, Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs};
use crate::{Config, Connection, Error};

/// How a session starts its encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsPlan {
    /// Plaintext.
    Off,
    /// SSLRequest, then TLS if the server agrees.
    Negotiate,
    /// The TLS handshake at once (`sslnegotiation=direct`).
    Direct,
}

impl TlsPlan {
    /// How a first session with `host` starts under the configuration's
    /// `sslmode` and `sslnegotiation` (allow starts plaintext; libpq never
    /// asks for TLS over a Unix socket, whatever sslmode says).
    pub(crate) fn first_for(config: &Config, host: &Host) -> TlsPlan {
        match (host, config.ssl_mode(), config.ssl_negotiation) {
            (Host::Unix(_), _, _) | (_, SslMode::Disable | SslMode::Allow, _) => TlsPlan::Off,
            (_, _, SslNegotiation::Direct) => TlsPlan::Direct,
            (_, _, SslNegotiation::Postgres) => TlsPlan::Negotiate,
        }
    }
}

/// One try: where the driver connects, and how the session there starts.
#[derive(Debug, Clone)]
pub struct Attempt {
    dial: Endpoint,
    /// The configured endpoint: its host name is the one TLS verifies and
    /// the password file matches, even when `dial` is the local socket.
    named: Endpoint,
    tls: TlsPlan,
    attrs: TargetSessionAttrs,
    /// A local-socket shortcut for a TCP host on this machine: when it
    /// fails, TCP follows and the failure is not reported.
    local: bool,
    /// The same endpoint again, the other way (`sslmode` allow or prefer).
    retried: bool,
    /// Protocol 3.0 asked for: the endpoint refused a newer StartupMessage.
    protocol_3_0: bool,
}

impl Attempt {
    /// Where to open the socket.
    pub fn endpoint(&self) -> &Endpoint {
        &self.dial
    }
}

/// What a session must be, judged once it is open.
pub(crate) struct SessionPlan {
    pub(crate) tls: TlsPlan,
    pub(crate) tls_config: Option<Arc<rustls::ClientConfig>>,
    /// The host name TLS verifies and sends as SNI.
    pub(crate) server_name: String,
    pub(crate) attrs: TargetSessionAttrs,
    /// Why the password file was not used, for an authentication error.
    pub(crate) passfile_note: Option<String>,
}

/// The connect plan of one configuration: which endpoint to try next, and
/// the whole story when none works.
pub struct Connector {
    config: Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    passfile: Passfile,
    queue: VecDeque<Attempt>,
    /// `prefer-standby`: the endpoints to try again, any session accepted,
    /// once no standby was found.
    second_pass: Option<Vec<Endpoint>>,
    tried: Vec<(Arc<str>, Error)>,
}

impl Connector {
    /// Checks the configuration, reads its files (certificates, password
    /// file) and lays out the attempts.
    pub fn new(config: &Config) -> Result<Connector, Error> {
        config.validate()?;
        let mut endpoints = config.endpoints()?;
        if config.load_balance_hosts == LoadBalanceHosts::Random {
            shuffle(&mut endpoints);
        }
        let any_tcp = endpoints.iter().any(|e| matches!(e.host, Host::Tcp(_)));
        let tls = if any_tcp {
            crate::tls::client_config(config)?
        } else {
            None
        };
        let passfile = match (&config.password, &config.passfile) {
            (None, Some(path)) => Passfile::load(path),
            _ => Passfile::Missing,
        };
        let (first, second_pass) = match config.target_session_attrs {
            TargetSessionAttrs::PreferStandby => (TargetSessionAttrs::Standby, Some(endpoints.clone())),
            attrs => (attrs, None),
        };
        let mut c = Connector {
            config: config.clone(),
            tls,
            passfile,
            queue: VecDeque::new(),
            second_pass,
            tried: Vec::new(),
        };
        for e in endpoints {
            c.plan(e, first);
        }
        Ok(c)
    }

    fn plan(&mut self, named: Endpoint, attrs: TargetSessionAttrs) {
        if self.config.may_use_local_socket(&named) {
            for dir in &self.config.local_socket_dirs {
                self.queue.push_back(Attempt {
                    dial: Endpoint {
                        host: Host::Unix(dir.clone()),
                        hostaddr: None,
                        port: named.port,
                    },
                    named: named.clone(),
                    tls: TlsPlan::Off,
                    attrs,
                    local: true,
                    retried: false,
                    protocol_3_0: false,
                });
            }
        }
        let tls = TlsPlan::first_for(&self.config, &named.host);
        self.queue.push_back(Attempt {
            dial: named.clone(),
            named,
            tls,
            attrs,
            local: false,
            retried: false,
            protocol_3_0: false,
        });
    }

    /// The next endpoint to try, or `None` when all have failed.
    pub fn next_attempt(&mut self) -> Option<Attempt> {
        if self.queue.is_empty() {
            for e in self.second_pass.take().unwrap_or_default() {
                self.plan(e, TargetSessionAttrs::Any);
            }
        }
        self.queue.pop_front()
    }

    /// The protocol machine for a socket opened to `attempt`'s endpoint.
    pub fn start(&self, attempt: &Attempt, now: Instant) -> Connection {
        let (config, plan) = self.session(attempt);
        Connection::start(&config, plan, now)
    }

    /// The settings of a session on `attempt`'s endpoint, and what it must be.
    fn session(&self, attempt: &Attempt) -> (Config, SessionPlan) {
        let mut config = self.config.for_endpoint(&attempt.dial);
        if attempt.protocol_3_0 {
            config.max_protocol_version = Some(crate::ProtocolVersion::V3_0);
        }
        let mut passfile_note = None;
        if config.password.is_none() {
            match &self.passfile {
                Passfile::Read(contents) => {
                    let host = match &attempt.named.host {
                        Host::Tcp(h) => h.clone(),
                        // libpq matches the default socket directory as
                        // "localhost", any other by its path.
                        Host::Unix(dir) if crate::config::is_default_socket_dir(dir) => "localhost".to_string(),
                        Host::Unix(dir) => dir.clone(),
                    };
                    let db = config.dbname.clone().unwrap_or_else(|| config.user.clone());
                    config.password = passfile::find(contents, &host, attempt.named.port, &db, &config.user);
                }
                Passfile::Ignored(why) => passfile_note = Some(why.clone()),
                Passfile::Missing => {}
            }
        }
        let server_name = match &attempt.named.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(_) => String::new(),
        };
        let plan = SessionPlan {
            tls: attempt.tls,
            tls_config: self.tls.clone(),
            server_name,
            attrs: attempt.attrs,
            passfile_note,
        };
        (config, plan)
    }

    /// A connection that delivers `request` to `attempt`'s endpoint, with
    /// the TLS its `sslmode` asks for, and nothing else (a driver writes what
    /// it transmits and feeds what it reads until
    /// [`Connection::cancel_sent`], then waits for the server to close).
    pub fn start_cancel(&self, attempt: &Attempt, request: crate::CancelRequest, now: Instant) -> Connection {
        let (config, plan) = self.session(attempt);
        Connection::start_cancel(&config, plan, request, now)
    }

    /// The socket for `attempt` could not be opened.
    pub fn failed(&mut self, attempt: Attempt, e: Error) {
        self.record(attempt, e, false);
    }

    /// The session on `attempt`'s socket could not start, or will not do.
    /// As libpq does, `sslmode=prefer` tries the host again without TLS
    /// when the server refused a TLS session, and `allow` with TLS when it
    /// refused a plaintext one.
    pub fn session_failed(&mut self, attempt: Attempt, conn: &Connection, e: Error) {
        // A pooler that predates protocol 3.2 refuses its StartupMessage
        // outright instead of negotiating: ask it for 3.0, unless 3.2 was
        // asked for by name. Not counted as a failure.
        if conn.refused_protocol(&e) && self.config.max_protocol_version.is_none() && !attempt.protocol_3_0 {
            self.queue.push_front(Attempt {
                protocol_3_0: true,
                ..attempt
            });
            return;
        }
        self.record(attempt, e, conn.is_tls())
    }

    fn record(&mut self, attempt: Attempt, e: Error, was_tls: bool) {
        if attempt.local {
            // The shortcut is an optimisation: TCP, queued behind it, is the
            // configured route and the one whose failure counts.
            return;
        }
        let mode = self.config.ssl_mode();
        let refused_by_server = matches!(e, Error::Db(_));
        let retry = match (attempt.tls, mode) {
            (TlsPlan::Negotiate, SslMode::Prefer) if (was_tls && refused_by_server) || matches!(e, Error::Tls(_)) => {
                Some(TlsPlan::Off)
            }
            (TlsPlan::Off, SslMode::Allow) if refused_by_server => Some(TlsPlan::Negotiate),
            _ => None,
        };
        let label = match mode {
            SslMode::Allow | SslMode::Prefer if retry.is_some() || attempt.retried => {
                format!("{} ({} TLS)", attempt.named, if was_tls { "with" } else { "without" })
            }
            _ => attempt.named.to_string(),
        };
        self.tried.push((label.into(), e));
        if let Some(tls) = retry {
            self.queue.push_front(Attempt {
                tls,
                retried: true,
                ..attempt
            });
        }
    }

    /// The error for a connect that found no usable server: the one
    /// failure when only one endpoint was tried, else each, in order.
    pub fn into_error(mut self) -> Error {
        match self.tried.len() {
            0 => Error::config("no host to connect to"),
            1 => self.tried.pop().expect("one").1,
            _ => Error::Unreachable(self.tried.into()),
        }
    }
}

/// Fisher–Yates with a seed from the standard library's per-process random
/// keys (no random-number crate for one shuffle per connect).
fn shuffle<T>(items: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    let mut state = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
    for i in (1..items.len()).rev() {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints_tried(s: &str, fail: impl Fn(&Attempt) -> Option<Error>) -> (Vec<String>, Result<(), Error>) {
        let mut plan = Connector::new(&Config::parse(s).unwrap()).unwrap();
        let mut seen = Vec::new();
        while let Some(a) = plan.next_attempt() {
            seen.push(format!("{} {:?} {:?}", a.endpoint(), a.tls, a.attrs));
            match fail(&a) {
                // A simulated session: TLS whenever TLS was asked for.
                Some(e) => {
                    let tls = a.tls != TlsPlan::Off;
                    plan.record(a, e, tls)
                }
                None => return (seen, Ok(())),
            }
        }
        (seen, Err(plan.into_error()))
    }

    fn refused(a: &Attempt) -> Option<Error> {
        Some(a.endpoint().connect_error(std::io::ErrorKind::ConnectionRefused.into()))
    }

    #[test]
    fn hosts_are_tried_in_order_and_every_failure_is_named() {
        let (seen, r) = endpoints_tried("host=a,b,c port=1,2,3 sslmode=disable", refused);
        assert_eq!(seen, ["a:1 Off Any", "b:2 Off Any", "c:3 Off Any"]);
        let e = r.unwrap_err();
        let Error::Unreachable(tried) = &e else { panic!("{e:?}") };
        assert_eq!(tried.len(), 3);
        let text = e.to_string();
        assert!(
            text.contains("3 tried") && text.contains("a:1") && text.contains("c:3"),
            "{text}"
        );
        // One endpoint: its own error, unchanged.
        let (_, r) = endpoints_tried("host=a sslmode=disable", refused);
        assert!(matches!(r, Err(Error::Connect { .. })));
    }

    #[test]
    fn prefer_retries_without_tls_and_allow_with_it_when_the_server_refuses() {
        let db = || {
            Error::Db(Box::new(crate::DbError {
                severity: "FATAL".into(),
                code: "28000".into(),
                message: "no pg_hba.conf entry".into(),
                ..Default::default()
            }))
        };
        let (seen, _) = endpoints_tried("host=a sslmode=prefer", |_| Some(db()));
        assert_eq!(seen, ["a:5432 Negotiate Any", "a:5432 Off Any"]);
        let (seen, _) = endpoints_tried("host=a sslmode=allow", |_| Some(db()));
        assert_eq!(seen, ["a:5432 Off Any", "a:5432 Negotiate Any"]);
        // A refused socket is not a reason to try the same host again.
        let (seen, _) = endpoints_tried("host=a sslmode=prefer", refused);
        assert_eq!(seen, ["a:5432 Negotiate Any"]);
        // require never falls back.
        let (seen, _) = endpoints_tried("host=a sslmode=require", |_| Some(Error::Tls("x".into())));
        assert_eq!(seen, ["a:5432 Negotiate Any"]);
        let (seen, _) = endpoints_tried("host=a sslmode=require sslnegotiation=direct", refused);
        assert_eq!(seen, ["a:5432 Direct Any"]);
    }

    #[test]
    fn local_socket_shortcut_comes_first_and_fails_quietly() {
        let (seen, r) = endpoints_tried("host=localhost port=7 local_socket=/run/x", refused);
        assert_eq!(
            seen,
            ["the Unix socket /run/x/.s.PGSQL.7 Off Any", "localhost:7 Negotiate Any"]
        );
        assert!(matches!(r, Err(Error::Connect { target, .. }) if &*target == "localhost:7"));
        // Not when TLS is demanded.
        let (seen, _) = endpoints_tried("host=localhost port=7 local_socket=/run/x sslmode=require", refused);
        assert_eq!(seen, ["localhost:7 Negotiate Any"]);
    }

    #[test]
    fn prefer_standby_makes_a_second_pass_accepting_any() {
        let (seen, _) = endpoints_tried("host=a,b sslmode=disable target_session_attrs=prefer-standby", refused);
        assert_eq!(
            seen,
            [
                "a:5432 Off Standby",
                "b:5432 Off Standby",
                "a:5432 Off Any",
                "b:5432 Off Any"
            ]
        );
    }

    #[test]
    fn random_load_balancing_varies_the_first_host() {
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let (seen, _) = endpoints_tried("host=a,b,c sslmode=disable load_balance_hosts=random", |_| None);
            firsts.insert(seen[0].clone());
        }
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let e = Connector::new(&Config::parse("host=a sslmode=verify-full").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sslrootcert") && e.contains("verify-full"), "{e}");
        let e = Connector::new(&Config::parse("host=a sslmode=verify-ca sslrootcert=/no/such.pem").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/no/such.pem"), "{e}");
    }
}
