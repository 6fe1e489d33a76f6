//! Layer 1: the protocol state machine. It owns every buffer and the FIFO of
//! requests in flight; a driver owns only the socket and moves bytes.
//!
//! Responses are matched to requests purely by order: every message the
//! server sends for a request lands on the entry at the front of `queue`.
//! A *sync group* is the run of requests up to a `Sync`; its tickets are
//! finished together when that group's `ReadyForQuery` arrives, so that an
//! error raised at `Sync` time (a deferred constraint at implicit commit)
//! can still fail them, and so that the transaction status a caller sees is
//! current when its result is handed over.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::ScramSha256;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::Type;

use crate::cache::StatementCache;
use crate::config::{ProtocolVersion, TargetSessionAttrs};
use crate::connect::{SessionPlan, TlsPlan};
use crate::params::{Encoded, Param};
use crate::row::{Column, Row, SimpleMessage};
use crate::{Config, DbError, Error};
use wire::Wire;

mod copy;
mod outcome;
mod request;
mod response;
mod startup;
mod types;
mod wire;

pub(crate) use copy::copy_data_header;
pub use outcome::TxOutcome;
pub(crate) use outcome::XID_PROBE;
use startup::not_postgres;

/// Names a request in flight; the key to its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// The transaction state the last `ReadyForQuery` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InTransaction,
    /// In a transaction block that has failed: only ROLLBACK will work.
    Failed,
}

/// What a driver should wait for on the socket next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

/// Something the server said outside any request's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Notice(Box<DbError>),
    Notification {
        process_id: i32,
        channel: String,
        payload: String,
    },
    ParameterStatus {
        name: String,
        value: String,
    },
}

/// What the driver must send on a *new* connection to the server to cancel
/// the statement running on this one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest {
    pub process_id: i32,
    pub secret_key: SecretKey,
}

/// The key that proves a cancel comes from the session's owner: 4 bytes
/// with protocol 3.0, up to 256 with 3.2 (PostgreSQL 18 sends 32).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretKey {
    len: u16,
    bytes: [u8; 256],
}

impl SecretKey {
    /// A key of 4 to 256 bytes.
    pub fn new(key: &[u8]) -> Option<SecretKey> {
        if !(4..=256).contains(&key.len()) {
            return None;
        }
        let mut bytes = [0; 256];
        bytes[..key.len()].copy_from_slice(key);
        Some(SecretKey {
            len: key.len() as u16,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Protocol 3.0's four-byte key.
impl From<i32> for SecretKey {
    fn from(k: i32) -> SecretKey {
        SecretKey::new(&k.to_be_bytes()).expect("four bytes")
    }
}

/// Never shows the key: whoever has it can cancel this session's queries.
impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.len)
    }
}

/// Never shows `secret_key`: whoever has it can cancel this session's queries.
impl std::fmt::Debug for CancelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelRequest")
            .field("process_id", &self.process_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl CancelRequest {
    /// The CancelRequest message: length, code 80877102, process id, key.
    pub fn encode(&self) -> Vec<u8> {
        let key = self.secret_key.as_bytes();
        let mut b = Vec::with_capacity(12 + key.len());
        b.extend_from_slice(&(12 + key.len() as i32).to_be_bytes());
        b.extend_from_slice(&80877102i32.to_be_bytes());
        b.extend_from_slice(&self.process_id.to_be_bytes());
        b.extend_from_slice(key);
        b
    }
}

/// A statement prepared on one connection. Dropping the last handle closes
/// it on the server (with the next request sent).
#[derive(Clone)]
pub struct Statement(Arc<StatementInner>);

/// A statement bound to a named portal inside a transaction: its rows are
/// fetched a few at a time ([`crate::ops::fetch`]), with other statements
/// in between. It lasts until the transaction ends.
#[derive(Clone, Debug)]
pub struct Portal(Arc<PortalInner>);

#[derive(Debug)]
struct PortalInner {
    name: String,
    sql: Arc<str>,
    columns: Arc<[Column]>,
}

impl Portal {
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn columns(&self) -> &[Column] {
        &self.0.columns
    }
}

struct StatementInner {
    name: String,
    sql: Arc<str>,
    params: Vec<Type>,
    columns: Arc<[Column]>,
    closer: Option<Arc<Mutex<Vec<String>>>>,
}

impl Drop for StatementInner {
    fn drop(&mut self) {
        if let Some(c) = &self.closer {
            if let Ok(mut v) = c.lock() {
                v.push(std::mem::take(&mut self.name));
            }
        }
    }
}

impl std::fmt::Debug for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statement")
            .field("name", &self.0.name)
            .field("sql", &self.0.sql)
            .field("params", &self.0.params)
            .field("columns", &self.0.columns)
            .finish()
    }
}

impl Statement {
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The SQL text it was prepared from.
    pub fn sql(&self) -> &str {
        &self.0.sql
    }
    pub fn params(&self) -> &[Type] {
        &self.0.params
    }
    pub fn columns(&self) -> &[Column] {
        &self.0.columns
    }
}

/// The rows and command tag of one extended-protocol statement.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub columns: Arc<[Column]>,
    pub rows: Vec<Row>,
    /// The command tag, e.g. `SELECT 3` or `UPDATE 1` (`None` for an empty query).
    pub tag: Option<String>,
}

impl QueryResult {
    /// Rows inserted, updated, deleted, selected… as the command tag says.
    pub fn rows_affected(&self) -> u64 {
        self.tag
            .as_deref()
            .and_then(|t| t.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// A finished request's result.
#[derive(Debug, Clone)]
pub enum Response {
    Rows(QueryResult),
    Prepared(Statement),
    Simple(Vec<SimpleMessage>),
    /// A statement bound to a portal.
    Portal(Portal),
    /// A `COPY … TO STDOUT` ended: the data chunks not taken while it ran
    /// ([`Connection::take_copy_chunks`]) and its command tag.
    CopyOut {
        rest: std::collections::VecDeque<bytes::Bytes>,
        tag: Option<String>,
    },
}

/// One unit of work to send.
pub struct Request<'a> {
    kind: RequestKind<'a>,
    deadline: Option<Instant>,
}

enum RequestKind<'a> {
    Simple(&'a str),
    Query(&'a str, &'a [Param<'a>]),
    Execute(&'a Statement, &'a [Param<'a>]),
    Prepare(&'a str, &'a [Type]),
    /// A statement whose parameters [`crate::ops::Query`] already encoded.
    Encoded(&'a str, Encoded),
    /// Transaction control (`BEGIN`, `COMMIT`, …) as an unnamed statement:
    /// nothing else depends on its `Parse`, so an unsent one can be taken
    /// back whole ([`Connection::retract`]).
    Control(&'a str),
    /// Binds an encoded statement to a named portal, without running it.
    BindPortal(&'a str, Encoded, &'a str),
    /// Runs a portal for at most this many rows (0: all that are left).
    FetchPortal(&'a Portal, u32),
}

impl RequestKind<'_> {
    /// The statement text, for traces.
    fn sql(&self) -> &str {
        match self {
            RequestKind::Simple(sql)
            | RequestKind::Query(sql, _)
            | RequestKind::Prepare(sql, _)
            | RequestKind::Encoded(sql, _)
            | RequestKind::Control(sql)
            | RequestKind::BindPortal(sql, _, _) => sql,
            RequestKind::Execute(stmt, _) => stmt.sql(),
            RequestKind::FetchPortal(p, _) => &p.0.sql,
        }
    }
}

impl<'a> Request<'a> {
    /// Simple-protocol query: may hold several `;`-separated statements,
    /// takes no parameters, returns text rows.
    pub fn simple(sql: &'a str) -> Self {
        Request {
            kind: RequestKind::Simple(sql),
            deadline: None,
        }
    }
    /// Extended-protocol statement with bound parameters; binary rows; one
    /// round trip even the first time (see [`crate::params`]).
    pub fn query(sql: &'a str, params: &'a [Param<'a>]) -> Self {
        Request {
            kind: RequestKind::Query(sql, params),
            deadline: None,
        }
    }
    /// Executes a prepared statement.
    pub fn execute(stmt: &'a Statement, params: &'a [Param<'a>]) -> Self {
        Request {
            kind: RequestKind::Execute(stmt, params),
            deadline: None,
        }
    }
    /// Prepares a named statement; `types` may fix leading parameter types.
    pub fn prepare(sql: &'a str, types: &'a [Type]) -> Self {
        Request {
            kind: RequestKind::Prepare(sql, types),
            deadline: None,
        }
    }
    /// When to give up: the core then asks for a `CancelRequest` and the
    /// request fails with [`Error::Timeout`].
    pub fn deadline(mut self, at: Option<Instant>) -> Self {
        self.deadline = at;
        self
    }
}

enum Phase {
    /// Waiting for an authentication request or its outcome.
    Auth,
    Scram(Box<ScramSha256>),
    /// Authenticated; waiting for the first ReadyForQuery.
    Starting,
    Ready,
    Closed(Error),
}

/// What an entry of the response queue still expects.
enum Entry {
    /// `Parse, Bind, [Describe portal], Execute` for one statement.
    Stmt(Box<StmtState>),
    /// `Parse, Describe statement`.
    Prepare(Box<PrepareState>),
    /// A whole simple query; acts as its own sync point.
    Simple(Box<SimpleState>),
    /// `Close statement` of an evicted or dropped statement.
    Close,
    /// The end of a sync group.
    Sync,
}

struct StmtState {
    ticket: Ticket,
    /// Name of the cache entry this request's `Parse` creates.
    parses: Option<Arc<str>>,
    /// A `Parse` was sent (named or unnamed), so `ParseComplete` comes first.
    parse_sent: bool,
    /// A cached statement whose columns are not known yet: this request's
    /// RowDescription teaches them to the cache.
    learns: Option<Arc<str>>,
    parsed: bool,
    bound: bool,
    columns: Option<Arc<[Column]>>,
    rows: Vec<Row>,
    copy: copy::CopyRole,
    /// Bound to this portal (name, statement text), not run: done once it
    /// is described.
    binds: Option<(Arc<str>, Arc<str>)>,
    /// Where this statement's messages sit in the send stream (absolute
    /// byte offset, length), so an unsent one can be taken back
    /// ([`Connection::retract`]) and a lost connection can tell whether
    /// any of it left. `None` for requests held back before the session
    /// was ready.
    span: Option<(u64, u64)>,
}

impl StmtState {
    /// A statement whose `Parse` (if any) creates no cache entry and whose
    /// columns are known (or not described).
    fn plain(ticket: Ticket, parse_sent: bool, columns: Option<Arc<[Column]>>, span: Option<(u64, u64)>) -> Self {
        StmtState {
            ticket,
            parses: None,
            parse_sent,
            learns: None,
            parsed: false,
            bound: false,
            columns,
            rows: Vec::new(),
            copy: copy::CopyRole::None,
            binds: None,
            span,
        }
    }
}

struct PrepareState {
    ticket: Ticket,
    name: String,
    sql: Arc<str>,
    parsed: bool,
    params: Option<Vec<Type>>,
}

struct SimpleState {
    ticket: Ticket,
    messages: Vec<SimpleMessage>,
    columns: Option<Arc<[String]>>,
    error: Option<Error>,
}

/// The protocol state machine of one PostgreSQL session. No I/O, no clock.
pub struct Connection {
    config: Config,
    phase: Phase,
    out: BytesMut,
    /// Requests submitted before the session is ready, sent once it is.
    held: BytesMut,
    input: BytesMut,
    queue: VecDeque<Entry>,
    /// Results of the current sync group, finished at its ReadyForQuery.
    group: Vec<(Ticket, Result<Response, Error>)>,
    /// Finished results by ticket; looked up once per request, so hashed
    /// with foldhash rather than SipHash (tickets are not attacker input).
    done: HashMap<Ticket, Result<Response, Error>, foldhash::fast::RandomState>,
    abandoned: Vec<Ticket>,
    deadlines: Vec<(Ticket, Instant)>,
    timed_out: Vec<Ticket>,
    cancel_grace_until: Option<Instant>,
    startup_deadline: Option<Instant>,
    next_ticket: u64,
    next_statement: u64,
    events: VecDeque<Event>,
    events_dropped: u64,
    /// Of those, notifications (what a listener reports as missed).
    notifications_dropped: u64,
    parameters: HashMap<String, String>,
    backend_key: Option<CancelRequest>,
    cancel_wanted: bool,
    tx_status: TransactionStatus,
    cache: StatementCache,
    to_close: Arc<Mutex<Vec<String>>>,
    batch_depth: u32,
    unsynced: bool,
    atomic_depth: u32,
    /// The nesting depth owned by the operation being polled (or by an open
    /// interactive transaction): statements may go out only while it equals
    /// `atomic_depth`, else they would run inside a sibling's transaction.
    active_depth: u32,
    /// An ErrorResponse (not one raised at Sync) failed the current group.
    group_failed: bool,
    /// A queued COMMIT or ROLLBACK of the outermost transaction: until it
    /// is answered, `tx_status` is stale.
    ending_tx: Option<Ticket>,
    /// Requests that failed with a stale-statement error alone in their
    /// sync group, so a retry cannot change what their siblings saw.
    failed_alone: Vec<Ticket>,
    default_deadline: Option<Instant>,
    /// Statements whose Close the request being encoded carries.
    closing: Vec<String>,
    /// Bytes of the send stream already handed to the socket: the absolute
    /// offset of `out[0]`, which statement spans are measured against.
    sent: u64,
    /// Statements in flight when the connection closed none of whose bytes
    /// had left: the server never saw them.
    never_sent: Vec<Ticket>,
    /// A transaction id whose fate a driver should look up on a new
    /// connection (see [`Connection::poll_outcome_query`]).
    outcome_wanted: Option<i64>,
    outcome: Option<Result<TxOutcome, Error>>,
    /// Set when a top-level transaction begins: the next statement sent
    /// carries [`XID_PROBE`] right behind it, so the transaction's id is
    /// known as early as its first write.
    probe_next: bool,
    early_probe: Option<Ticket>,
    /// Plaintext, the SSLRequest exchange, or TLS.
    wire: Wire,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    /// The host name TLS verifies and sends as SNI.
    server_name: String,
    /// What the session must be (judged by `ops::Startup` once ready).
    session_attrs: TargetSessionAttrs,
    /// Why the password file was not used, for an authentication error.
    passfile_note: Option<String>,
    /// The protocol version in use: the one asked for, or the server's
    /// answer in NegotiateProtocolVersion.
    protocol: ProtocolVersion,
    /// SCRAM-SHA-256-PLUS bound this session to its TLS channel.
    channel_bound: bool,
    /// An authentication request arrived: the server took the
    /// StartupMessage (its protocol version included).
    startup_taken: bool,
    /// A connection that only delivers a CancelRequest (see
    /// [`Connection::start_cancel`]).
    cancel_only: bool,
    /// Spans of statements in flight, while a subscriber listens (see
    /// `crate::trace`).
    traces: Vec<(Ticket, crate::trace::StatementSpan)>,
    /// The latest time a driver handed in (the core reads no clock): when
    /// traced statements start and end.
    now: Instant,
    /// Types looked up on this session, and results waiting for them.
    types: types::Types,
    /// The `COPY FROM STDIN` taking data: nothing else may be sent.
    copy_in: Option<Ticket>,
    /// Portals named so far (`duet_c1`, …).
    next_portal: u64,
}

impl Connection {
    /// Starts a session with the configuration's first endpoint, TLS as
    /// its `sslmode` asks (a driver choosing among several hosts uses
    /// [`crate::Connector`], which builds its `Connection`s itself).
    pub fn new(config: &Config, now: Instant) -> Connection {
        let host = config
            .endpoints()
            .ok()
            .and_then(|e| e.into_iter().next())
            .map(|e| e.host);
        let host = host.unwrap_or(crate::Host::Unix(String::new()));
        let tls = TlsPlan::first_for(config, &host);
        let server_name = match host {
            crate::Host::Tcp(h) => h,
            crate::Host::Unix(_) => String::new(),
        };
        let (tls_config, error) = match tls {
            TlsPlan::Off => (None, None),
            _ => match crate::tls::client_config(config) {
                Ok(c) => (c, None),
                Err(e) => (None, Some(e)),
            },
        };
        let plan = SessionPlan {
            tls,
            tls_config,
            server_name,
            attrs: config.target_session_attrs,
            passfile_note: None,
        };
        let mut conn = Connection::start(config, plan, now);
        if let Some(e) = error {
            conn.fail(e);
        }
        conn
    }

    /// Starts a session as `plan` says: queues the StartupMessage (behind
    /// an SSLRequest, or a TLS handshake, when TLS is wanted).
    pub(crate) fn start(config: &Config, plan: SessionPlan, now: Instant) -> Connection {
        let mut out = BytesMut::new();
        let mut params: Vec<(&str, &str)> = vec![("user", &config.user), ("client_encoding", "UTF8")];
        if let Some(db) = &config.dbname {
            params.push(("database", db));
        }
        if let Some(a) = config
            .application_name
            .as_ref()
            .or(config.fallback_application_name.as_ref())
        {
            params.push(("application_name", a));
        }
        if let Some(o) = &config.options {
            params.push(("options", o));
        }
        let protocol = config.max_protocol_version();
        let mut phase = match startup::startup_message(protocol, &params, &mut out) {
            Ok(()) => Phase::Auth,
            Err(e) => Phase::Closed(e),
        };
        let wire = match plan.tls {
            TlsPlan::Off => Wire::Plain,
            TlsPlan::Negotiate => Wire::AwaitingSsl { sent: 0 },
            TlsPlan::Direct => match plan
                .tls_config
                .clone()
                .map(|c| crate::tls::Tls::start(c, &plan.server_name, config.ssl_mode(), true))
            {
                Some(Ok(tls)) => Wire::Tls(Box::new(tls)),
                Some(Err(e)) => {
                    phase = Phase::Closed(e);
                    Wire::Plain
                }
                None => {
                    phase = Phase::Closed(Error::config("sslnegotiation=direct without TLS settings"));
                    Wire::Plain
                }
            },
        };
        Connection {
            cache: StatementCache::new(config.statement_cache_capacity),
            startup_deadline: config.connect_timeout.and_then(|t| deadline_after(now, t)),
            config: config.clone(),
            phase,
            out,
            held: BytesMut::new(),
            input: BytesMut::new(),
            queue: VecDeque::new(),
            group: Vec::new(),
            done: HashMap::default(),
            abandoned: Vec::new(),
            deadlines: Vec::new(),
            timed_out: Vec::new(),
            cancel_grace_until: None,
            next_ticket: 0,
            next_statement: 0,
            events: VecDeque::new(),
            events_dropped: 0,
            notifications_dropped: 0,
            parameters: HashMap::new(),
            backend_key: None,
            cancel_wanted: false,
            tx_status: TransactionStatus::Idle,
            to_close: Arc::new(Mutex::new(Vec::new())),
            batch_depth: 0,
            unsynced: false,
            atomic_depth: 0,
            active_depth: 0,
            group_failed: false,
            ending_tx: None,
            failed_alone: Vec::new(),
            default_deadline: None,
            closing: Vec::new(),
            sent: 0,
            never_sent: Vec::new(),
            outcome_wanted: None,
            outcome: None,
            probe_next: false,
            early_probe: None,
            wire,
            tls_config: plan.tls_config,
            server_name: plan.server_name,
            session_attrs: plan.attrs,
            passfile_note: plan.passfile_note,
            protocol,
            channel_bound: false,
            startup_taken: false,
            cancel_only: false,
            traces: Vec::new(),
            now,
            types: types::Types::default(),
            copy_in: None,
            next_portal: 0,
        }
    }

    /// A connection that delivers `request` and nothing else, encrypted as
    /// `plan` says (libpq 17 sends cancels the way it opens sessions): the
    /// CancelRequest takes the StartupMessage's place.
    pub(crate) fn start_cancel(config: &Config, plan: SessionPlan, request: CancelRequest, now: Instant) -> Connection {
        let mut conn = Connection::start(config, plan, now);
        conn.out.clear();
        conn.out.extend_from_slice(&request.encode());
        conn.cancel_only = true;
        conn
    }

    /// For a cancel connection (from [`crate::Connector::start_cancel`]): the request has
    /// left whole (through TLS when there is TLS). The server then closes
    /// the socket.
    pub fn cancel_sent(&self) -> bool {
        self.cancel_only
            && self.out.is_empty()
            && !self.has_output()
            && !matches!(self.wire, Wire::AwaitingSsl { .. })
            && !matches!(self.phase, Phase::Closed(_))
    }

    // ---- state the caller may look at ----

    /// True once the session is authenticated and ready for queries.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// The error that closed the connection, if it is closed.
    pub fn closed_reason(&self) -> Option<&Error> {
        match &self.phase {
            Phase::Closed(e) => Some(e),
            _ => None,
        }
    }

    /// True when nothing is in flight and the last ReadyForQuery said idle:
    /// the only state in which a pool may hand the connection to someone else.
    pub fn is_idle(&self) -> bool {
        self.is_ready() && self.queue.is_empty() && self.tx_status == TransactionStatus::Idle
    }

    pub fn transaction_status(&self) -> TransactionStatus {
        self.tx_status
    }

    /// Whether the statements submitted next will run inside a transaction
    /// block that is already open: the last status, unless a rollback of
    /// the outermost transaction is queued and not yet answered.
    pub fn transaction_open(&self) -> bool {
        self.tx_status != TransactionStatus::Idle && self.ending_tx.is_none()
    }

    /// A server parameter as last reported (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(|s| s.as_str())
    }

    /// What a driver needs to cancel from another socket (`None` before the
    /// server sent BackendKeyData).
    pub fn cancel_token(&self) -> Option<CancelRequest> {
        self.backend_key
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Requests whose responses are still expected.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// How many events were dropped because nobody took them in time.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// How many of the dropped events were notifications.
    pub fn notifications_dropped(&self) -> u64 {
        self.notifications_dropped
    }

    /// Named statements currently cached.
    pub fn cached_statements(&self) -> usize {
        self.cache.len()
    }

    // ---- outputs ----

    /// The earliest instant at which [`Connection::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.copy_in.is_some() && !self.has_output() {
            // The server waits for the copy's data, so a wait for input
            // must not block: it only looks whether an error came.
            return Some(self.now);
        }
        let mut t = self.cancel_grace_until;
        if !self.is_ready() {
            t = min_opt(t, self.startup_deadline);
        }
        for (ticket, at) in &self.deadlines {
            if !self.timed_out.contains(ticket) {
                t = min_opt(t, Some(*at));
            }
        }
        t
    }

    /// A cancel to send on a new socket, at most once per timeout.
    pub fn poll_cancel(&mut self) -> Option<CancelRequest> {
        if self.cancel_wanted {
            self.cancel_wanted = false;
            self.backend_key
        } else {
            None
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the driver should read: something is expected from the server.
    pub fn wants_input(&self) -> bool {
        match self.phase {
            Phase::Closed(_) => false,
            Phase::Ready => !self.queue.is_empty(),
            _ => true,
        }
    }

    /// What to wait for after the driver wrote what it could. `Ok(None)`:
    /// nothing to wait for (poll the operation again); an error when the
    /// operation waits on a connection that cannot make progress.
    pub fn interest(&self, wrote: bool) -> Result<Option<Interest>, Error> {
        let i = Interest {
            read: self.wants_input(),
            write: self.has_output(),
        };
        if i.read || i.write {
            return Ok(Some(i));
        }
        if let Phase::Closed(e) = &self.phase {
            return Err(e.clone());
        }
        if wrote {
            Ok(None)
        } else {
            Err(Error::misuse("an operation is waiting, but nothing is in flight"))
        }
    }

    /// Feeds the outcome of one socket read: `0` bytes is end of file.
    pub fn handle_read(&mut self, bytes: &[u8], now: Instant) -> Result<(), Error> {
        if bytes.is_empty() {
            self.handle_eof(now);
            Ok(())
        } else {
            self.handle_input(bytes, now)
        }
    }

    /// For a driver waiting for events: the next one, or the error that
    /// closed the connection.
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        match &self.phase {
            Phase::Closed(e) => Err(e.clone()),
            _ => Ok(None),
        }
    }

    /// Moves the rows that have arrived so far for the statement `t` into
    /// `out`, while it is still running: how a streaming operation keeps
    /// memory bounded. The rest come with its result.
    pub fn take_rows(&mut self, t: Ticket, out: &mut Vec<Row>) {
        if self.types.is_typing(t) {
            return;
        }
        for e in &mut self.queue {
            if let Entry::Stmt(s) = e {
                if s.ticket == t {
                    if out.is_empty() {
                        // Handed over whole: no row is moved.
                        std::mem::swap(out, &mut s.rows);
                    } else {
                        out.append(&mut s.rows);
                    }
                    return;
                }
            }
        }
    }

    /// Takes the result of a finished request; `None` while it is pending.
    pub fn take_result(&mut self, t: Ticket) -> Option<Result<Response, Error>> {
        if let Some(r) = self.done.remove(&t) {
            return Some(r);
        }
        if let Phase::Closed(e) = &self.phase {
            if self.queue.is_empty() && !self.group.iter().any(|(g, _)| *g == t) {
                return Some(Err(e.clone()));
            }
        }
        None
    }

    // ---- inputs ----

    /// The driver's clock as an operation is polled: statements submitted
    /// without a time of their own (transaction control) start then.
    pub(crate) fn observe_time(&mut self, now: Instant) {
        self.now = now;
    }

    /// Feeds bytes read from the server, in any split.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), Error> {
        self.now = now;
        if let Phase::Closed(e) = &self.phase {
            return Err(e.clone());
        }
        if let Err(e) = self.take_in(bytes) {
            return Err(self.fail(e));
        }
        self.process_input(now)
    }

    /// Where a driver may read the server's next bytes itself, with room
    /// for at least `room` more, saving the copy [`handle_read`]
    /// (Self::handle_read) makes: the connection's own input buffer, while
    /// the session is in plaintext (`None` under TLS or while it is being
    /// negotiated; read into a buffer of the driver's then). After reading
    /// `n` bytes into its spare capacity and advancing it, call
    /// [`handle_read_in_place(n)`](Self::handle_read_in_place).
    pub fn input_buffer(&mut self, room: usize) -> Option<&mut BytesMut> {
        if !self.reads_in_place() {
            return None;
        }
        self.input.reserve(room);
        Some(&mut self.input)
    }

    fn reads_in_place(&self) -> bool {
        matches!(self.wire, wire::Wire::Plain) && !matches!(self.phase, Phase::Closed(_))
    }

    /// `n` bytes were read into [`input_buffer`](Self::input_buffer) (0:
    /// the server closed the socket): handled as [`handle_read`]
    /// (Self::handle_read) handles bytes.
    pub fn handle_read_in_place(&mut self, n: usize, now: Instant) -> Result<(), Error> {
        self.now = now;
        if n == 0 {
            self.handle_eof(now);
            return Ok(());
        }
        if let Phase::Closed(e) = &self.phase {
            return Err(e.clone());
        }
        self.process_input(now)
    }

    /// Handles what the input buffer holds.
    fn process_input(&mut self, now: Instant) -> Result<(), Error> {
        if self.cancel_only {
            // The server answers a cancel with nothing but closing.
            self.input.clear();
            return Ok(());
        }
        if !self.is_ready() {
            if let Some(e) = not_postgres(&self.input) {
                return Err(self.fail(e));
            }
        }
        loop {
            // Check the frame length before postgres-protocol reserves room
            // for it: a hostile length must not allocate.
            if self.input.len() >= 5 {
                let len = i32::from_be_bytes([self.input[1], self.input[2], self.input[3], self.input[4]]);
                if len < 4 {
                    return Err(self.fail(Error::protocol(format!("message length {len} is below 4"))));
                }
                if len as usize + 1 > self.config.max_message_size {
                    return Err(self.fail(Error::protocol(format!(
                        "server message of {} bytes exceeds max_message_size ({})",
                        len as usize + 1,
                        self.config.max_message_size
                    ))));
                }
                // Startup frames postgres-protocol cannot parse (3.2's long
                // cancel keys, NegotiateProtocolVersion).
                if !matches!(self.phase, Phase::Ready)
                    && matches!(self.input[0], b'K' | b'v')
                    && self.input.len() > len as usize
                {
                    let frame = self.input.split_to(len as usize + 1);
                    if let Err(e) = self.handle_startup_frame(frame[0], &frame[5..]) {
                        return Err(self.fail(e));
                    }
                    continue;
                }
                // Rows are most of the traffic: a statement's DataRows become
                // Rows over their own bytes, without the general parser.
                if self.input[0] == b'D'
                    && self.input.len() > len as usize
                    && matches!(self.phase, Phase::Ready)
                    && matches!(self.queue.front(), Some(Entry::Stmt(_)))
                {
                    if let Err(e) = self.data_rows() {
                        return Err(self.fail(e));
                    }
                    continue;
                }
            }
            let msg = match Message::parse(&mut self.input) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(self.fail(Error::protocol(format!("unparsable message: {e}")))),
            };
            if let Err(e) = self.handle_message(msg) {
                return Err(self.fail(e));
            }
            if let Phase::Closed(e) = &self.phase {
                return Err(e.clone());
            }
        }
        self.send_type_lookup();
        // A socket that stays readable (a flood of notices, rows arriving
        // faster than they are consumed) must not outlast a limit: time is
        // judged here too, not only when the driver's wait times out, and
        // after the bytes, so an answer that came in them counts.
        if self.has_timers() {
            self.handle_timeout(now);
            if let Phase::Closed(e) = &self.phase {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    /// The server closed the socket.
    pub fn handle_eof(&mut self, now: Instant) {
        self.now = now;
        if !matches!(self.phase, Phase::Closed(_)) {
            let e = match &self.wire {
                Wire::Tls(t) if t.is_handshaking() => Error::Tls(t.closed_during_handshake().into()),
                Wire::AwaitingSsl { .. } => {
                    Error::closed("the server closed the connection instead of answering the SSLRequest")
                }
                _ => Error::closed("the server closed the connection"),
            };
            self.fail(e);
        }
    }

    fn has_timers(&self) -> bool {
        !self.deadlines.is_empty() || self.cancel_grace_until.is_some() || !self.is_ready()
    }

    /// Time has passed; spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if matches!(self.phase, Phase::Closed(_)) {
            return;
        }
        if !self.is_ready() && self.startup_deadline.is_some_and(|d| now >= d) {
            self.fail(Error::closed("connect_timeout passed before the session was ready"));
            return;
        }
        if self.cancel_grace_until.is_some_and(|d| now >= d) {
            self.fail(Error::closed(
                "the server did not answer a cancelled request within the grace period",
            ));
            return;
        }
        let due: Vec<Ticket> = self
            .deadlines
            .iter()
            .filter(|(_, at)| now >= *at)
            .map(|(t, _)| *t)
            .collect();
        self.expire(due, now);
    }

    /// Work abandoned in flight is of use to nobody: the server is asked to
    /// stop it, as if its deadline had passed (a pool does this before it
    /// resets a connection given back busy, instead of waiting out a long
    /// statement). Its answers are still read and dropped.
    pub fn cancel_abandoned(&mut self, now: Instant) {
        self.now = now;
        if matches!(self.phase, Phase::Closed(_)) {
            return;
        }
        let in_flight: Vec<Ticket> = self
            .abandoned
            .iter()
            .copied()
            .filter(|t| self.queue.iter().any(|e| entry_ticket(e) == Some(*t)))
            .collect();
        self.expire(in_flight, now);
    }

    /// These requests are past their time: a cancel is owed, and the
    /// server has the grace period to answer.
    fn expire(&mut self, tickets: Vec<Ticket>, now: Instant) {
        let mut fire = false;
        let mut grace = false;
        for t in tickets {
            if !self.timed_out.contains(&t) {
                self.timed_out.push(t);
                grace = true;
                if self.copy_in == Some(t) {
                    // A copy the server reads data for is ended by
                    // CopyFail, with nothing to race. Behind unsent data
                    // (a server that stopped reading: a lock wait, say) it
                    // could not arrive: then a cancel is owed too.
                    fire |= !self.out.is_empty();
                    self.copy_in_end(t, Some("its time limit passed"));
                } else {
                    fire = true;
                }
            }
        }
        if grace && !fire {
            self.cancel_grace_until = deadline_after(now, self.config.cancel_grace);
        }
        if fire {
            self.cancel_wanted = self.backend_key.is_some();
            // No grace that overflows the clock: the limit is then the
            // latest instant there is, in effect none.
            self.cancel_grace_until = deadline_after(now, self.config.cancel_grace);
        }
    }

    /// The caller no longer wants this request's result: its responses are
    /// discarded on arrival. (An operation that opened a transaction rolls it
    /// back in its own `abandon`.)
    pub fn abandon(&mut self, t: Ticket) {
        // Remembered only while its responses may still arrive, so the list
        // cannot grow with tickets that are long finished.
        let pending = self.queue.iter().any(|e| entry_ticket(e) == Some(t)) || self.group.iter().any(|(g, _)| *g == t);
        if self.done.remove(&t).is_none() && pending && !self.abandoned.contains(&t) {
            self.abandoned.push(t);
        }
        self.deadlines.retain(|(d, _)| *d != t);
        self.forget_typing(t);
        self.copy_in_end(t, Some("abandoned by the client"));
    }

    /// Queues Terminate; the driver sends it and closes the socket.
    pub fn close(&mut self) {
        if !matches!(self.phase, Phase::Closed(_)) {
            self.fail(Error::closed("the client closed the connection"));
            // Only Terminate leaves now: what was queued (a COMMIT its
            // caller was told failed, say) must never reach the server.
            frontend::terminate(&mut self.out);
        }
    }

    // ---- responses ----

    /// Closes the connection with `e`: every request in flight fails.
    fn fail(&mut self, e: Error) -> Error {
        // Results of an unfinished group are void (its implicit commit may
        // not have happened), except where the group ends a transaction
        // whose COMMIT is still unanswered: their truth is that COMMIT's,
        // which its owner finds out (see `ops::atomic`).
        let fate_pending = self.ending_tx.is_some_and(|c| {
            self.queue.iter().any(|q| entry_ticket(q) == Some(c)) || self.group.iter().any(|(g, _)| *g == c)
        });
        self.never_sent.clear();
        for entry in std::mem::take(&mut self.queue) {
            if let Entry::Stmt(s) = &entry {
                // A statement not wholly handed to the socket never ran.
                if s.span.is_none_or(|(start, len)| start + len > self.sent) {
                    self.never_sent.push(s.ticket);
                }
            }
            if let Some(t) = entry_ticket(&entry) {
                // A request past its deadline ends as a timeout, whatever
                // closed the connection while it waited for its cancel.
                let err = if self.timed_out.contains(&t) {
                    Error::Timeout
                } else {
                    e.clone()
                };
                self.group.push((t, Err(err)));
            }
        }
        // Statements after an answered COMMIT in the group ran in a new
        // implicit transaction whose fate nobody looks up.
        let keep_until = match self
            .ending_tx
            .and_then(|c| self.group.iter().position(|(g, _)| *g == c))
        {
            Some(i) => i + 1,
            None => self.group.len(),
        };
        for (i, (t, r)) in std::mem::take(&mut self.group).into_iter().enumerate() {
            let r = match r {
                Ok(v) if fate_pending && i < keep_until => Ok(v),
                Ok(_) => Err(e.clone()),
                Err(x) => Err(x),
            };
            self.finish(t, r);
        }
        // Nothing queued may leave after the connection is given up: a
        // driver that flushes later (a `close`) must not send a COMMIT
        // whose caller was told it failed — nor the rest of its records.
        self.out.clear();
        if let Wire::Tls(t) = &mut self.wire {
            t.discard_output(matches!(e, Error::Tls(_)));
        }
        self.held.clear();
        // A copy that was taking data is over: nothing more goes out.
        self.copy_in = None;
        self.deadlines.clear();
        self.cancel_grace_until = None;
        self.group_failed = false;
        self.ending_tx = None;
        self.fail_held_types(&e);
        self.phase = Phase::Closed(e.clone());
        e
    }

    fn finish(&mut self, t: Ticket, r: Result<Response, Error>) {
        self.deadlines.retain(|(d, _)| *d != t);
        let r = match r {
            Err(Error::Db(e)) if e.code == crate::error::sqlstate::QUERY_CANCELED && self.timed_out.contains(&t) => {
                Err(Error::Timeout)
            }
            other => other,
        };
        self.timed_out.retain(|x| *x != t);
        if let Some(i) = self.traces.iter().position(|(x, _)| *x == t) {
            self.traces.swap_remove(i).1.finish(&r, self.now);
        }
        if let Some(i) = self.abandoned.iter().position(|a| *a == t) {
            self.abandoned.swap_remove(i);
            self.forget_typing(t);
            return;
        }
        if !self.typing_anything() {
            self.done.insert(t, r);
        } else if let Some(r) = self.hold_for_types(t, r) {
            self.done.insert(t, r);
        }
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.config.event_capacity.max(1) {
            if let Some(Event::Notification { .. }) = self.events.pop_front() {
                self.notifications_dropped += 1;
            }
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }
}

fn entry_ticket(e: &Entry) -> Option<Ticket> {
    match e {
        Entry::Stmt(s) => Some(s.ticket),
        Entry::Prepare(p) => Some(p.ticket),
        Entry::Simple(s) => Some(s.ticket),
        Entry::Close | Entry::Sync => None,
    }
}

/// `now + d`, or `None` (no limit) when that is past the end of the clock:
/// a limit of any size is accepted and never overflows.
pub fn deadline_after(now: Instant, d: std::time::Duration) -> Option<Instant> {
    now.checked_add(d)
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn proto(e: std::io::Error) -> Error {
    Error::protocol(format!("malformed message: {e}"))
}

fn io_to_encode(e: std::io::Error) -> Error {
    Error::encode(e.to_string())
}
