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

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::Type;

use crate::cache::{CacheLookup, StatementCache};
use crate::params::{self, Encoded, Param};
use crate::row::{type_from_oid, Column, Row, RowBlock, SimpleMessage, SimpleRow};
use crate::{Config, DbError, Error};

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
    pub secret_key: i32,
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
    /// The 16 bytes of the CancelRequest message.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        frontend::cancel_request(self.process_id, self.secret_key, &mut b);
        b.to_vec()
    }
}

/// A statement prepared on one connection. Dropping the last handle closes
/// it on the server (with the next request sent).
#[derive(Clone)]
pub struct Statement(Arc<StatementInner>);

struct StatementInner {
    name: String,
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
            .field("params", &self.0.params)
            .field("columns", &self.0.columns)
            .finish()
    }
}

impl Statement {
    pub fn name(&self) -> &str {
        &self.0.name
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
    copy_out: bool,
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
            copy_out: false,
            span,
        }
    }
}

struct PrepareState {
    ticket: Ticket,
    name: String,
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
}

/// Asks for the id of the transaction in progress without assigning one
/// (so it costs nothing when the transaction wrote nothing, and works on a
/// standby). `NULL`: nothing written yet. PostgreSQL 10 and later.
pub(crate) const XID_PROBE: &str = "SELECT pg_catalog.txid_current_if_assigned()";

/// What became of a transaction whose COMMIT was sent on a connection that
/// was lost before the answer came back, as another session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    Committed,
    Aborted,
    /// The server no longer knows (the id is too old), or the lookup could
    /// not finish in time.
    Unknown,
}

impl Connection {
    /// Starts a session: queues the StartupMessage.
    pub fn new(config: &Config, now: Instant) -> Connection {
        let mut out = BytesMut::new();
        let mut params: Vec<(&str, &str)> = vec![("user", &config.user), ("client_encoding", "UTF8")];
        if let Some(db) = &config.dbname {
            params.push(("database", db));
        }
        if let Some(a) = &config.application_name {
            params.push(("application_name", a));
        }
        if let Some(o) = &config.options {
            params.push(("options", o));
        }
        // Only fails for interior NUL bytes; the server would reject those too.
        let phase = match frontend::startup_message(params.iter().copied(), &mut out) {
            Ok(()) => Phase::Auth,
            Err(e) => Phase::Closed(Error::config(format!("startup parameters: {e}"))),
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
        }
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

    /// Named statements currently cached.
    pub fn cached_statements(&self) -> usize {
        self.cache.len()
    }

    // ---- outputs ----

    /// Bytes to send; empty when there is nothing to send.
    pub fn poll_transmit(&self) -> &[u8] {
        &self.out
    }

    /// Marks `n` bytes of [`Connection::poll_transmit`] as sent.
    pub fn advance_transmit(&mut self, n: usize) {
        let n = n.min(self.out.len());
        self.out.advance(n);
        self.sent += n as u64;
    }

    /// The earliest instant at which [`Connection::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
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
            write: !self.out.is_empty(),
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
        for e in &mut self.queue {
            if let Entry::Stmt(s) = e {
                if s.ticket == t {
                    out.append(&mut s.rows);
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

    /// Feeds bytes read from the server, in any split.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), Error> {
        if let Phase::Closed(e) = &self.phase {
            return Err(e.clone());
        }
        self.input.extend_from_slice(bytes);
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
    pub fn handle_eof(&mut self, _now: Instant) {
        if !matches!(self.phase, Phase::Closed(_)) {
            self.fail(Error::closed("the server closed the connection"));
        }
    }

    fn has_timers(&self) -> bool {
        !self.deadlines.is_empty() || self.cancel_grace_until.is_some() || !self.is_ready()
    }

    /// Time has passed; spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
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
        let mut fire = false;
        for (t, at) in &self.deadlines {
            if now >= *at && !self.timed_out.contains(t) {
                self.timed_out.push(*t);
                fire = true;
            }
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

    /// Queues a simple query whose result nobody waits for (the rollback of
    /// an abandoned transaction). Errors are dropped with the result.
    pub fn submit_detached(&mut self, sql: &str) {
        self.submit_detached_ticket(sql);
    }

    /// [`Connection::submit_detached`] for the statement that ends the
    /// outermost transaction, so [`Connection::transaction_open`] is right
    /// before its answer arrives.
    pub fn submit_detached_end(&mut self, sql: &str) {
        if let Some(t) = self.submit_detached_ticket(sql) {
            self.ending_tx = Some(t);
        }
    }

    /// Tells the connection that `t` ends the outermost transaction, so
    /// [`Connection::transaction_open`] is right before its answer arrives.
    pub(crate) fn ends_transaction(&mut self, t: Ticket) {
        self.ending_tx = Some(t);
    }

    fn submit_detached_ticket(&mut self, sql: &str) -> Option<Ticket> {
        let t = self.submit_request(&Request::simple(sql)).ok()?;
        self.abandon(t);
        Some(t)
    }

    /// The parameter OIDs `sql` was last prepared with (see
    /// `params::encode_inferred`).
    pub(crate) fn param_hint(&self, sql: &str) -> &[u32] {
        self.cache.param_hint(sql)
    }

    /// Submits a statement whose parameters are already encoded (the path
    /// [`crate::ops::Query`] takes after inferring the parameter types).
    pub(crate) fn submit_encoded(
        &mut self,
        sql: &str,
        enc: Encoded,
        deadline: Option<Instant>,
        _now: Instant,
    ) -> Result<Ticket, Error> {
        self.submit_request(&Request {
            kind: RequestKind::Encoded(sql, enc),
            deadline,
        })
    }

    fn end_request(&mut self, buf: &mut BytesMut) {
        if self.batch_depth == 0 {
            frontend::sync(buf);
            self.queue.push_back(Entry::Sync);
            self.unsynced = false;
        } else {
            self.unsynced = true;
        }
    }

    // ---- batching (used by operations) ----

    /// Opens a batch: requests submitted until the matching
    /// [`Connection::end_batch`] share one `Sync`, so they travel and fail
    /// together. Batches nest.
    pub fn begin_batch(&mut self) {
        self.batch_depth += 1;
    }

    pub fn end_batch(&mut self) {
        self.batch_depth = self.batch_depth.saturating_sub(1);
        if self.batch_depth == 0 && self.unsynced {
            self.push_sync();
        }
    }

    /// Ends every open batch: for a driver whose operation was dropped
    /// (or panicked) between `begin_batch` and `end_batch`. The half-built
    /// group is poisoned first, so none of it takes effect.
    pub fn close_batches(&mut self) {
        if self.batch_depth > 0 {
            self.poison_batch();
            self.batch_depth = 1;
            self.end_batch();
        }
    }

    /// True between `begin_batch` and the matching `end_batch`.
    pub fn in_batch(&self) -> bool {
        self.batch_depth > 0
    }

    /// Makes the open batch fail as a whole on the server: a statement that
    /// cannot parse joins its sync group, so the server rolls back what the
    /// group did and skips the rest (their results say `RolledBack` and
    /// `Skipped`). For a pipeline one of whose statements was refused in
    /// the client: its siblings must not run as if nothing happened.
    pub fn poison_batch(&mut self) {
        if self.batch_depth == 0 || !self.unsynced {
            return;
        }
        if let Ok(t) = self.submit_control(
            "SELECT 'duet: a statement of this pipeline was refused before it was sent, so none of it may run' FROM",
        ) {
            self.abandon(t);
        }
    }

    /// A deadline given to every request submitted without one, until
    /// cleared: how a driver puts one time limit on a whole operation.
    pub fn set_default_deadline(&mut self, at: Option<Instant>) {
        self.default_deadline = at;
    }

    /// Transaction nesting as submitted so far (for `atomic`'s savepoints).
    pub fn atomic_depth(&self) -> u32 {
        self.atomic_depth
    }

    pub fn set_atomic_depth(&mut self, d: u32) {
        self.atomic_depth = d;
    }

    /// The depth owned by whoever is submitting now (see
    /// [`Connection::foreign_transaction_open`]).
    pub fn active_depth(&self) -> u32 {
        self.active_depth
    }

    pub fn set_active_depth(&mut self, d: u32) {
        self.active_depth = d;
    }

    /// True when a transaction opened by an operation that is not being
    /// polled now (a sibling in a pipeline) has not sent its end yet: a new
    /// statement must wait, or it would run, and roll back, inside it.
    pub fn foreign_transaction_open(&self) -> bool {
        self.atomic_depth > self.active_depth
    }

    /// Whether `t` failed with a stale-statement error while alone in its
    /// sync group (asked once: the answer is forgotten).
    pub(crate) fn failed_alone(&mut self, t: Ticket) -> bool {
        match self.failed_alone.iter().position(|x| *x == t) {
            Some(i) => {
                self.failed_alone.swap_remove(i);
                true
            }
            None => false,
        }
    }

    // ---- submitting ----

    /// Encodes a request into the send buffer. No I/O; atomic: on error
    /// nothing was queued.
    pub fn submit(&mut self, req: Request<'_>, _now: Instant) -> Result<Ticket, Error> {
        self.submit_request(&req)
    }

    fn submit_request(&mut self, req: &Request<'_>) -> Result<Ticket, Error> {
        if let Phase::Closed(e) = &self.phase {
            return Err(e.clone());
        }

        let ticket = Ticket(self.next_ticket);
        let mut buf = std::mem::take(self.send_buf());
        let mark = (buf.len(), self.queue.len(), self.unsynced);
        let r = self.encode_request(req, ticket, &mut buf);
        self.settle_closes(r.is_ok());
        if r.is_err() {
            buf.truncate(mark.0);
            self.queue.truncate(mark.1);
            self.unsynced = mark.2;
        }
        *self.send_buf() = buf;
        r?;
        self.next_ticket += 1;
        if let Some(d) = req.deadline.or(self.default_deadline) {
            self.deadlines.push((ticket, d));
        }
        // Behind a statement that has taken the transaction's snapshot
        // already, the probe changes nothing the application can see (after
        // a `SET TRANSACTION` or a `LOCK`, a query would take the snapshot
        // too early): it waits for such a statement.
        let snapshot_taken = || match req.kind {
            RequestKind::Query(sql, _) | RequestKind::Encoded(sql, _) => takes_snapshot(sql),
            _ => false,
        };
        if self.probe_next && snapshot_taken() {
            self.probe_next = false;
            let probe = Request {
                kind: RequestKind::Encoded(XID_PROBE, Encoded::default()),
                deadline: None,
            };
            self.early_probe = self.submit_request(&probe).ok();
        }
        Ok(ticket)
    }

    /// The next statement submitted carries the transaction-id probe behind
    /// it (see `ops::atomic`); `false` takes that back.
    pub(crate) fn probe_next_statement(&mut self, on: bool) {
        self.probe_next = on;
    }

    /// The probe sent behind a transaction's first statement, once.
    pub(crate) fn take_early_probe(&mut self) -> Option<Ticket> {
        self.early_probe.take()
    }

    fn encode_request(&mut self, req: &Request<'_>, ticket: Ticket, buf: &mut BytesMut) -> Result<(), Error> {
        if !matches!(req.kind, RequestKind::Query(..) | RequestKind::Encoded(..)) {
            self.close_dropped_statements(buf);
        }
        match req.kind {
            RequestKind::Simple(sql) => {
                if self.unsynced {
                    // An error earlier in the open group would make the
                    // server discard this Query until a Sync: end the group.
                    frontend::sync(buf);
                    self.queue.push_back(Entry::Sync);
                    self.unsynced = false;
                }
                frontend::query(sql, buf).map_err(|e| sql_error(sql, e))?;
                self.queue.push_back(Entry::Simple(Box::new(SimpleState {
                    ticket,
                    messages: Vec::new(),
                    columns: None,
                    error: None,
                })));
                return Ok(());
            }
            RequestKind::Query(sql, params) => {
                let enc = match params::encode_inferred(params, self.cache.param_hint(sql))? {
                    Some(e) => e,
                    None => {
                        return Err(Error::misuse(
                            "a parameter's type cannot be inferred; prepare the statement first",
                        ))
                    }
                };
                self.encode_query(sql, &enc, ticket, buf)?;
            }
            RequestKind::Encoded(sql, ref enc) => self.encode_query(sql, enc, ticket, buf)?,
            RequestKind::Control(sql) => {
                let start = buf.len();
                frontend::parse("", sql, std::iter::empty(), buf).map_err(|e| sql_error(sql, e))?;
                params::write_bind("", "", &Encoded::default(), buf)?;
                frontend::execute("", 0, buf).map_err(io_to_encode)?;
                let span = self.span_of(start, buf.len());
                let columns = Some(Arc::from(Vec::new()));
                self.queue
                    .push_back(Entry::Stmt(Box::new(StmtState::plain(ticket, true, columns, span))));
            }
            RequestKind::Execute(stmt, params) => {
                let enc = params::encode_typed(params, stmt.params())?;
                let start = buf.len();
                params::write_bind("", stmt.name(), &enc, buf)?;
                frontend::execute("", 0, buf).map_err(io_to_encode)?;
                let span = self.span_of(start, buf.len());
                let columns = Some(stmt.0.columns.clone());
                self.queue
                    .push_back(Entry::Stmt(Box::new(StmtState::plain(ticket, false, columns, span))));
            }
            RequestKind::Prepare(sql, types) => {
                self.next_statement += 1;
                let name = format!("duet_p{}", self.next_statement);
                frontend::parse(&name, sql, types.iter().map(|t| t.oid()), buf).map_err(|e| sql_error(sql, e))?;
                frontend::describe(b'S', &name, buf).map_err(io_to_encode)?;
                self.queue.push_back(Entry::Prepare(Box::new(PrepareState {
                    ticket,
                    name,
                    parsed: false,
                    params: None,
                })));
            }
        }
        self.end_request(buf);
        Ok(())
    }

    fn encode_query(&mut self, sql: &str, enc: &Encoded, ticket: Ticket, buf: &mut BytesMut) -> Result<(), Error> {
        let (name, parses, columns) = match self.cache.lookup(sql, enc.oids()) {
            CacheLookup::Hit { name, columns } => {
                self.close_dropped_statements(buf);
                (name, None, columns)
            }
            CacheLookup::Miss { evicted } => {
                // Closed with the next request: queued here they would be
                // lost if this one failed to encode.
                if let Ok(mut v) = self.to_close.lock() {
                    v.extend(evicted.iter().map(|n| n.to_string()));
                }
                self.close_dropped_statements(buf);
                self.next_statement += 1;
                let name: Arc<str> = format!("duet_s{}", self.next_statement).into();
                (name.clone(), Some(name), None)
            }
            CacheLookup::Disabled => {
                self.close_dropped_statements(buf);
                (Arc::from(""), Some(Arc::from("")), None)
            }
        };
        let start = buf.len();
        if parses.is_some() {
            frontend::parse(&name, sql, enc.oids(), buf).map_err(|e| sql_error(sql, e))?;
        }
        params::write_bind("", &name, enc, buf)?;
        if columns.is_none() {
            frontend::describe(b'P', "", buf).map_err(io_to_encode)?;
        }
        frontend::execute("", 0, buf).map_err(io_to_encode)?;
        // Cached only once everything was encoded: a failed submit leaves
        // no entry behind.
        let parse_sent = parses.is_some();
        let parses = parses.filter(|n| !n.is_empty());
        if let Some(name) = &parses {
            self.cache.insert(sql, enc.oids().collect(), name.clone());
        }
        self.queue.push_back(Entry::Stmt(Box::new(StmtState {
            ticket,
            learns: if parse_sent || columns.is_some() {
                None
            } else {
                Some(name.clone())
            },
            parses,
            parse_sent,
            parsed: false,
            bound: false,
            columns,
            rows: Vec::new(),
            copy_out: false,
            span: self.span_of(start, buf.len()),
        })));
        Ok(())
    }

    /// The absolute span of `buf[start..end]` in the send stream, when the
    /// request goes straight to the send buffer.
    fn span_of(&self, start: usize, end: usize) -> Option<(u64, u64)> {
        self.is_ready()
            .then(|| (self.sent + start as u64, (end - start) as u64))
    }

    /// Submits a transaction-control statement (see `RequestKind::Control`).
    pub(crate) fn submit_control(&mut self, sql: &str) -> Result<Ticket, Error> {
        self.submit_request(&Request {
            kind: RequestKind::Control(sql),
            deadline: None,
        })
    }

    /// Takes back a statement none of whose bytes has left yet: its
    /// messages are cut out of the send buffer and its response is no
    /// longer expected. False when it cannot be (some of it left, it was
    /// held back before the session was ready, or others rely on the named
    /// statement its `Parse` creates). How a dropped transaction keeps its
    /// unsent `COMMIT` from ever reaching the server.
    pub(crate) fn retract(&mut self, t: Ticket) -> bool {
        let Some(i) = self
            .queue
            .iter()
            .position(|e| matches!(e, Entry::Stmt(s) if s.ticket == t))
        else {
            return false;
        };
        let Entry::Stmt(s) = &self.queue[i] else { return false };
        let Some((start, len)) = s.span else { return false };
        if start < self.sent || s.parses.is_some() {
            return false;
        }
        let (at, len_us) = ((start - self.sent) as usize, len as usize);
        if at + len_us > self.out.len() {
            return false;
        }
        let tail = self.out.split_off(at);
        self.out.extend_from_slice(&tail[len_us..]);
        self.queue.remove(i);
        for e in self.queue.iter_mut() {
            if let Entry::Stmt(s) = e {
                if let Some((st, _)) = &mut s.span {
                    if *st > start {
                        *st -= len;
                    }
                }
            }
        }
        self.deadlines.retain(|(d, _)| *d != t);
        self.abandoned.retain(|a| *a != t);
        self.timed_out.retain(|x| *x != t);
        if self.ending_tx == Some(t) {
            self.ending_tx = None;
        }
        true
    }

    /// True when `t` was in flight as the connection closed and none of its
    /// bytes had been handed to the socket: the server never saw it.
    pub fn never_sent(&self, t: Ticket) -> bool {
        self.never_sent.contains(&t)
    }

    /// Asks the driver to look up, on a new connection, what became of the
    /// transaction `xid` (see [`Connection::poll_outcome_query`]).
    pub(crate) fn request_outcome(&mut self, xid: i64) {
        self.outcome_wanted = Some(xid);
        self.outcome = None;
    }

    /// A transaction id whose outcome the running operation needs: the
    /// driver runs [`crate::ops::tx_outcome`] for it on a new connection to
    /// the same server and hands the answer to
    /// [`Connection::handle_outcome`]. Asked once.
    pub fn poll_outcome_query(&mut self) -> Option<i64> {
        self.outcome_wanted.take()
    }

    /// The answer to [`Connection::poll_outcome_query`].
    pub fn handle_outcome(&mut self, r: Result<TxOutcome, Error>) {
        self.outcome = Some(r);
    }

    pub(crate) fn take_outcome(&mut self) -> Option<Result<TxOutcome, Error>> {
        self.outcome.take()
    }

    fn close_dropped_statements(&mut self, buf: &mut BytesMut) {
        let names = match self.to_close.lock() {
            Ok(mut v) if !v.is_empty() => std::mem::take(&mut *v),
            _ => return,
        };
        for n in names {
            if frontend::close(b'S', &n, buf).is_ok() {
                self.queue.push_back(Entry::Close);
                self.closing.push(n);
            }
        }
    }

    /// After a submit: the Closes it carried are sent, or, if it failed and
    /// its bytes were taken back, they wait for the next request.
    fn settle_closes(&mut self, sent: bool) {
        if sent {
            self.closing.clear();
        } else if !self.closing.is_empty() {
            if let Ok(mut v) = self.to_close.lock() {
                v.append(&mut self.closing);
            }
        }
    }

    /// Where requests go: the send buffer once the session is ready, held
    /// back until then (the server would read them as auth messages).
    fn send_buf(&mut self) -> &mut BytesMut {
        if self.is_ready() {
            &mut self.out
        } else {
            &mut self.held
        }
    }

    fn push_sync(&mut self) {
        let buf = self.send_buf();
        frontend::sync(buf);
        self.queue.push_back(Entry::Sync);
        self.unsynced = false;
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
        // whose caller was told it failed.
        self.out.clear();
        self.held.clear();
        self.deadlines.clear();
        self.cancel_grace_until = None;
        self.group_failed = false;
        self.ending_tx = None;
        self.phase = Phase::Closed(e.clone());
        e
    }

    fn finish(&mut self, t: Ticket, r: Result<Response, Error>) {
        self.deadlines.retain(|(d, _)| *d != t);
        if let Some(i) = self.abandoned.iter().position(|a| *a == t) {
            self.abandoned.swap_remove(i);
            return;
        }
        let r = match r {
            Err(Error::Db(e)) if e.code == crate::error::sqlstate::QUERY_CANCELED && self.timed_out.contains(&t) => {
                Err(Error::Timeout)
            }
            other => other,
        };
        self.timed_out.retain(|x| *x != t);
        self.done.insert(t, r);
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.config.event_capacity.max(1) {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn handle_message(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            // Asynchronous messages may arrive at any time.
            Message::NoticeResponse(body) => {
                let e = DbError::parse_notice(&body)?;
                self.push_event(Event::Notice(Box::new(e)));
                return Ok(());
            }
            Message::NotificationResponse(body) => {
                let ev = Event::Notification {
                    process_id: body.process_id(),
                    channel: body.channel().map_err(proto)?.to_string(),
                    payload: body.message().map_err(proto)?.to_string(),
                };
                self.push_event(ev);
                return Ok(());
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(proto)?.to_string();
                let value = body.value().map_err(proto)?.to_string();
                self.parameters.insert(name.clone(), value.clone());
                if self.is_ready() {
                    self.push_event(Event::ParameterStatus { name, value });
                }
                return Ok(());
            }
            _ => {}
        }
        match self.phase {
            Phase::Ready => self.handle_response(msg),
            Phase::Closed(_) => Ok(()),
            _ => self.handle_startup(msg),
        }
    }

    fn handle_startup(&mut self, msg: Message) -> Result<(), Error> {
        let password = || {
            self.config.password.clone().ok_or_else(|| {
                Error::auth(format!(
                    "the server asked for a password for user {:?}, but none was given",
                    self.config.user
                ))
            })
        };
        match msg {
            Message::AuthenticationOk => {
                if let Phase::Scram(_) = self.phase {
                    return Err(Error::auth("server ended SCRAM without its final message"));
                }
                self.phase = Phase::Starting;
            }
            Message::AuthenticationCleartextPassword => {
                let pw = password()?;
                frontend::password_message(pw.as_bytes(), &mut self.out).map_err(io_to_encode)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let pw = password()?;
                let hash = postgres_protocol::authentication::md5_hash(
                    self.config.user.as_bytes(),
                    pw.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut self.out).map_err(io_to_encode)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                let mut offered = Vec::new();
                while let Some(m) = mechanisms.next().map_err(proto)? {
                    scram |= m == SCRAM_SHA_256;
                    offered.push(m.to_string());
                }
                if !scram {
                    return Err(Error::auth(format!(
                        "the server offers SASL mechanisms {offered:?}; duet supports SCRAM-SHA-256 only (no channel binding without TLS)"
                    )));
                }
                let pw = password()?;
                let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.out).map_err(io_to_encode)?;
                self.phase = Phase::Scram(Box::new(s));
            }
            Message::AuthenticationSaslContinue(body) => {
                let Phase::Scram(s) = &mut self.phase else {
                    return Err(Error::protocol("SASLContinue outside a SASL exchange"));
                };
                s.update(body.data()).map_err(|e| Error::auth(format!("SCRAM: {e}")))?;
                let m = s.message().to_vec();
                frontend::sasl_response(&m, &mut self.out).map_err(io_to_encode)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let Phase::Scram(s) = &mut self.phase else {
                    return Err(Error::protocol("SASLFinal outside a SASL exchange"));
                };
                s.finish(body.data())
                    .map_err(|e| Error::auth(format!("SCRAM: the server's signature does not verify: {e}")))?;
                self.phase = Phase::Auth;
            }
            Message::AuthenticationKerberosV5 => return Err(unsupported_auth("Kerberos V5")),
            Message::AuthenticationScmCredential => return Err(unsupported_auth("SCM credentials")),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(unsupported_auth("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(unsupported_auth("SSPI")),
            Message::BackendKeyData(body) => {
                self.backend_key = Some(CancelRequest {
                    process_id: body.process_id(),
                    secret_key: body.secret_key(),
                });
            }
            Message::ReadyForQuery(body) => {
                if !matches!(self.phase, Phase::Starting) {
                    return Err(Error::protocol("ReadyForQuery before authentication completed"));
                }
                self.tx_status = tx_status(body.status())?;
                self.phase = Phase::Ready;
                let held = std::mem::take(&mut self.held);
                self.out.extend_from_slice(&held);
            }
            Message::ErrorResponse(body) => {
                return Err(Error::Db(Box::new(DbError::parse(&body)?)));
            }
            _ => return Err(Error::protocol("unexpected message during startup")),
        }
        Ok(())
    }

    fn handle_response(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            Message::ErrorResponse(body) => {
                let db = DbError::parse(&body)?;
                let fatal = db.severity == "FATAL" || db.severity == "PANIC";
                self.handle_error(Error::Db(Box::new(db.clone())));
                if fatal {
                    return Err(Error::Db(Box::new(db)));
                }
                return Ok(());
            }
            Message::ReadyForQuery(body) => {
                self.tx_status = tx_status(body.status())?;
                if !matches!(self.queue.front(), Some(Entry::Sync | Entry::Simple(_))) {
                    // Left in the queue, the request fails with the
                    // connection instead of vanishing.
                    return Err(Error::protocol("ReadyForQuery with no sync point pending"));
                }
                match self.queue.pop_front() {
                    Some(Entry::Sync) => {}
                    Some(Entry::Simple(s)) => {
                        let r = match s.error {
                            Some(e) => Err(e),
                            None => Ok(Response::Simple(s.messages)),
                        };
                        self.group.push((s.ticket, r));
                    }
                    _ => return Err(Error::protocol("ReadyForQuery with no sync point pending")),
                }
                if self.ending_tx.is_some_and(|e| self.group.iter().any(|(t, _)| *t == e)) {
                    self.ending_tx = None;
                }
                if std::mem::take(&mut self.group_failed) {
                    self.void_rolled_back();
                }
                for (t, r) in std::mem::take(&mut self.group) {
                    self.finish(t, r);
                }
                if !self
                    .queue
                    .iter()
                    .any(|e| entry_ticket(e).is_some_and(|t| self.timed_out.contains(&t)))
                {
                    // Nothing timed out is left: no cancel is owed, and one
                    // sent now would hit whatever runs next.
                    self.cancel_grace_until = None;
                    self.cancel_wanted = false;
                }
                // A cancel stops one statement: if the next one to run is
                // past its deadline too, it needs a cancel of its own.
                let next = self.queue.iter().find_map(entry_ticket);
                if next.is_some_and(|t| self.timed_out.contains(&t)) {
                    self.cancel_wanted = self.backend_key.is_some();
                }
                return Ok(());
            }
            _ => {}
        }
        let front = self
            .queue
            .front_mut()
            .ok_or_else(|| Error::protocol(format!("unexpected message {} with nothing in flight", describe(&msg))))?;
        match (front, msg) {
            (Entry::Stmt(s), Message::ParseComplete) if s.parse_sent && !s.parsed => s.parsed = true,
            (Entry::Stmt(s), Message::BindComplete) if !s.bound => s.bound = true,
            (Entry::Stmt(s), Message::RowDescription(body)) => {
                let columns = columns_of(&body)?;
                if let Some(name) = s.parses.as_ref().or(s.learns.as_ref()) {
                    self.cache.set_columns(name, columns.clone());
                }
                s.columns = Some(columns);
            }
            (Entry::Stmt(s), Message::NoData) => {
                let columns: Arc<[Column]> = Arc::from(Vec::new());
                if let Some(name) = s.parses.as_ref().or(s.learns.as_ref()) {
                    self.cache.set_columns(name, columns.clone());
                }
                s.columns = Some(columns);
            }
            (Entry::Stmt(_), Message::CommandComplete(body)) => {
                let tag = body.tag().map_err(proto)?.to_string();
                self.complete_stmt(Some(tag));
            }
            (Entry::Stmt(_), Message::EmptyQueryResponse) | (Entry::Stmt(_), Message::PortalSuspended) => {
                self.complete_stmt(None);
            }
            (Entry::Stmt(s), Message::CopyOutResponse(_)) => s.copy_out = true,
            (Entry::Stmt(s), Message::CopyData(_)) if s.copy_out => {}
            (Entry::Stmt(s), Message::CopyDone) if s.copy_out => {}
            (entry @ (Entry::Stmt(_) | Entry::Simple(_)), Message::CopyInResponse(_)) => {
                // COPY FROM STDIN is not supported yet: refuse it so the
                // server answers with an error instead of waiting for data.
                frontend::copy_fail("COPY FROM STDIN is not supported by duet yet", &mut self.out)
                    .map_err(io_to_encode)?;
                if let Entry::Stmt(_) = entry {
                    // The server ignored the Sync we sent while it was in
                    // copy-in mode; the queued sync point needs a new one.
                    frontend::sync(&mut self.out);
                }
            }
            (Entry::Simple(s), Message::CopyOutResponse(_)) => {
                s.error
                    .get_or_insert_with(|| Error::misuse("COPY TO STDOUT is not supported by duet yet"));
            }
            (Entry::Simple(_), Message::CopyData(_)) | (Entry::Simple(_), Message::CopyDone) => {}
            (Entry::Prepare(p), Message::ParseComplete) if !p.parsed => p.parsed = true,
            (Entry::Prepare(p), Message::ParameterDescription(body)) => {
                let oids = body.parameters().collect::<Vec<_>>().map_err(proto)?;
                p.params = Some(oids.into_iter().map(type_from_oid).collect());
            }
            (Entry::Prepare(_), Message::RowDescription(body)) => {
                let columns = columns_of(&body)?;
                self.complete_prepare(columns)?;
            }
            (Entry::Prepare(_), Message::NoData) => self.complete_prepare(Arc::from(Vec::new()))?,
            (Entry::Simple(s), Message::RowDescription(body)) => {
                let mut names = Vec::new();
                let mut fields = body.fields();
                while let Some(f) = fields.next().map_err(proto)? {
                    names.push(f.name().to_string());
                }
                s.columns = Some(names.into());
            }
            (Entry::Simple(s), Message::DataRow(body)) => {
                let columns = s
                    .columns
                    .clone()
                    .ok_or_else(|| Error::protocol("DataRow before RowDescription"))?;
                let buffer = body.buffer();
                let mut values = Vec::with_capacity(columns.len());
                let mut ranges = body.ranges();
                while let Some(r) = ranges.next().map_err(proto)? {
                    values.push(match r {
                        Some(r) => Some(
                            std::str::from_utf8(
                                buffer
                                    .get(r)
                                    .ok_or_else(|| Error::protocol("DataRow range out of bounds"))?,
                            )
                            .map_err(|_| Error::protocol("simple query value is not UTF-8"))?
                            .to_string(),
                        ),
                        None => None,
                    });
                }
                if values.len() != columns.len() {
                    return Err(Error::protocol("DataRow width differs from RowDescription"));
                }
                s.messages.push(SimpleMessage::Row(SimpleRow { columns, values }));
            }
            (Entry::Simple(s), Message::CommandComplete(body)) => {
                s.messages
                    .push(SimpleMessage::CommandComplete(body.tag().map_err(proto)?.to_string()));
                s.columns = None;
            }
            (Entry::Simple(s), Message::EmptyQueryResponse) => s.messages.push(SimpleMessage::Empty),
            (Entry::Close, Message::CloseComplete) => {
                self.queue.pop_front();
            }
            (_, msg) => {
                return Err(Error::protocol(format!(
                    "unexpected message {} for the request in flight",
                    describe(&msg)
                )))
            }
        }
        Ok(())
    }

    /// Turns the complete DataRow frames at the front of the input (the
    /// first one is known to be whole and of a sane length) into rows of
    /// the statement in flight, all sharing one block of bytes.
    fn data_rows(&mut self) -> Result<(), Error> {
        let max = self.config.max_message_size.min(u32::MAX as usize);
        let input = &self.input[..];
        let mut total = 0;
        // Frames the general path must judge (an insane length, another
        // message) end the batch; so does a block reaching 4 GiB.
        while input.len() >= total + 5 && input[total] == b'D' {
            let len = i32::from_be_bytes([input[total + 1], input[total + 2], input[total + 3], input[total + 4]]);
            let Ok(len) = usize::try_from(len) else { break };
            let end = total + 1 + len;
            if len < 4 || len + 1 > max || end > input.len() || end > u32::MAX as usize {
                break;
            }
            total = end;
        }
        if total == 0 {
            // The caller checked the first frame; never loop on nothing.
            return Err(Error::protocol("internal: no whole DataRow to take"));
        }
        let Some(Entry::Stmt(s)) = self.queue.front_mut() else {
            return Err(Error::protocol("DataRow with no statement in flight"));
        };
        let columns = s
            .columns
            .clone()
            .ok_or_else(|| Error::protocol("DataRow before RowDescription"))?;
        let block = RowBlock::new(columns, self.input.split_to(total).freeze());
        let data = block.data();
        let mut at = 0;
        while at < total {
            let len = u32::from_be_bytes([data[at + 1], data[at + 2], data[at + 3], data[at + 4]]) as usize;
            let end = at + 1 + len;
            if len < 6 {
                return Err(Error::protocol("DataRow shorter than its header"));
            }
            let count = i16::from_be_bytes([data[at + 5], data[at + 6]]);
            let count = usize::try_from(count).map_err(|_| Error::protocol("DataRow with a negative value count"))?;
            s.rows.push(Row::new(&block, at + 7..end, count)?);
            at = end;
        }
        Ok(())
    }

    fn complete_stmt(&mut self, tag: Option<String>) {
        if let Some(Entry::Stmt(s)) = self.queue.pop_front() {
            if s.copy_out {
                // The data went by unread: never report that as success.
                let e = Error::misuse("COPY TO STDOUT is not supported by duet yet");
                self.group.push((s.ticket, Err(e)));
                return;
            }
            let columns = s.columns.unwrap_or_else(|| Arc::from(Vec::new()));
            let r = Response::Rows(QueryResult {
                columns,
                rows: s.rows,
                tag,
            });
            self.group.push((s.ticket, Ok(r)));
        }
    }

    fn complete_prepare(&mut self, columns: Arc<[Column]>) -> Result<(), Error> {
        if let Some(Entry::Prepare(p)) = self.queue.pop_front() {
            let params = p
                .params
                .ok_or_else(|| Error::protocol("RowDescription before ParameterDescription"))?;
            let stmt = Statement(Arc::new(StatementInner {
                name: p.name,
                params,
                columns,
                closer: Some(self.to_close.clone()),
            }));
            self.group.push((p.ticket, Ok(Response::Prepared(stmt))));
        }
        Ok(())
    }

    /// An ErrorResponse: fails the request it belongs to; the server then
    /// skips everything up to the next Sync, so those requests are failed
    /// as skipped.
    fn handle_error(&mut self, e: Error) {
        match self.queue.front_mut() {
            Some(Entry::Simple(s)) => {
                s.error.get_or_insert(e);
            }
            Some(Entry::Sync) | None => {
                // Raised at Sync (e.g. implicit commit failed): the whole
                // group's work is void.
                for (_, r) in self.group.iter_mut() {
                    if r.is_ok() {
                        *r = Err(e.clone());
                    }
                }
            }
            Some(_) => {
                self.group_failed = true;
                let stale = matches!(
                    e.code(),
                    Some(crate::error::sqlstate::FEATURE_NOT_SUPPORTED)
                        | Some(crate::error::sqlstate::INVALID_SQL_STATEMENT_NAME)
                );
                if stale && self.group.is_empty() && matches!(self.queue.get(1), Some(Entry::Sync)) {
                    if let Some(t) = self.queue.front().and_then(entry_ticket) {
                        self.failed_alone.truncate(15);
                        self.failed_alone.push(t);
                    }
                }
                let mut first = Some(e);
                while let Some(entry) = self.queue.front() {
                    if matches!(entry, Entry::Sync | Entry::Simple(_)) {
                        break;
                    }
                    let entry = self.queue.pop_front().expect("front exists");
                    let err = first.take().unwrap_or(Error::Skipped);
                    match entry {
                        Entry::Stmt(s) => {
                            if let Some(name) = &s.parses {
                                if !s.parsed {
                                    self.cache.remove(name);
                                }
                            }
                            self.group.push((s.ticket, Err(err)));
                        }
                        Entry::Prepare(p) => self.group.push((p.ticket, Err(err))),
                        _ => {}
                    }
                }
            }
        }
    }

    /// A statement of this group failed, so the server rolled back the
    /// transaction that statement ran in, with the statements of the group
    /// that shared it. Their results said "done": writes must say "undone".
    ///
    /// The failed transaction began after the group's last COMMIT or
    /// ROLLBACK. Ended idle, it was the implicit one the group ran in: all
    /// of it is void. Ended in a failed block, an explicit BEGIN in the
    /// group took over the implicit transaction, statements before it
    /// included, and its owner rolls it back: those earlier statements are
    /// void; the block's own are its owner's to report.
    fn void_rolled_back(&mut self) {
        let tag_of = |r: &Result<Response, Error>| match r {
            Ok(Response::Rows(q)) => q.tag.as_deref().map(|t| t.split(' ').next().unwrap_or(t).to_string()),
            _ => None,
        };
        let start = self
            .group
            .iter()
            .rposition(|(_, r)| matches!(tag_of(r).as_deref(), Some("COMMIT" | "ROLLBACK")))
            .map_or(0, |i| i + 1);
        let end = match self.tx_status {
            TransactionStatus::Idle => self.group.len(),
            TransactionStatus::Failed => self.group[start..]
                .iter()
                .position(|(_, r)| matches!(tag_of(r).as_deref(), Some("BEGIN" | "START")))
                .map_or(start, |i| start + i),
            TransactionStatus::InTransaction => start,
        };
        for (_, r) in &mut self.group[start..end] {
            // A read's rows stay true of the snapshot it saw; only writes
            // were undone. (A SELECT calling a function that writes is
            // taken for a read: its tag cannot tell.)
            let read = matches!(tag_of(r).as_deref(), Some("SELECT" | "SHOW" | "FETCH"));
            if matches!(r, Ok(Response::Rows(_))) && !read {
                *r = Err(Error::RolledBack);
            }
        }
    }

    /// Forgets a cached statement that the server no longer accepts (its
    /// result type changed, or it was deallocated), closing it on the
    /// server. Operations call this before they retry.
    pub fn forget_statement(&mut self, sql: &str) {
        let names = self.cache.remove_sql(sql);
        if matches!(self.phase, Phase::Closed(_)) {
            return;
        }
        for name in names {
            let buf = self.send_buf();
            if frontend::close(b'S', &name, buf).is_ok() {
                self.queue.push_back(Entry::Close);
                if self.batch_depth == 0 {
                    self.push_sync();
                } else {
                    self.unsynced = true;
                }
            }
        }
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

fn columns_of(body: &postgres_protocol::message::backend::RowDescriptionBody) -> Result<Arc<[Column]>, Error> {
    let mut out = Vec::new();
    let mut fields = body.fields();
    while let Some(f) = fields.next().map_err(proto)? {
        out.push(Column {
            name: f.name().to_string(),
            type_: type_from_oid(f.type_oid()),
            table_oid: f.table_oid(),
            column_id: f.column_id(),
        });
    }
    Ok(out.into())
}

fn tx_status(b: u8) -> Result<TransactionStatus, Error> {
    match b {
        b'I' => Ok(TransactionStatus::Idle),
        b'T' => Ok(TransactionStatus::InTransaction),
        b'E' => Ok(TransactionStatus::Failed),
        other => Err(Error::protocol(format!("unknown transaction status {other:#x}"))),
    }
}

/// Whether a statement surely takes a snapshot when it runs: a query or a
/// data-changing statement, by its first word (comments and parentheses
/// skipped).
fn takes_snapshot(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = rest.strip_prefix('(') {
            rest = r.trim_start();
        } else {
            break;
        }
    }
    let len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
    let word = &rest[..len];
    [
        "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "MERGE",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w))
}

/// `now + d`, or `None` (no limit) when that is past the end of the clock:
/// a limit of any size is accepted and never overflows.
pub fn deadline_after(now: Instant, d: std::time::Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The error for a peer whose first answer is not PostgreSQL's, named
/// instead of reported as a message of an absurd length.
fn not_postgres(input: &[u8]) -> Option<Error> {
    let first = *input.first()?;
    // Judged once five bytes are in: before that, "HT" may still be HTTP.
    if b"HTTP/".starts_with(&input[..input.len().min(5)]) {
        return (input.len() >= 5)
            .then(|| Error::protocol("the server answered like an HTTP server, not PostgreSQL: is the port right?"));
    }
    // Before the session is ready the server sends only these.
    if !b"REKSNZv".contains(&first) {
        let shown: String = input.iter().take(16).map(|b| b.escape_ascii().to_string()).collect();
        return Some(Error::protocol(format!(
            "the server's answer is not PostgreSQL's (it begins with \"{shown}\"): is the port right?"
        )));
    }
    None
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

/// A statement's text that cannot be sent: a NUL byte is named as such,
/// not as a parameter that failed to encode.
fn sql_error(sql: &str, e: std::io::Error) -> Error {
    match sql.find('\0') {
        Some(at) => Error::invalid(format!(
            "the SQL text has a NUL byte at byte {at}; PostgreSQL cannot take one in a statement"
        )),
        None => Error::encode(format!("statement text: {e}")),
    }
}

fn io_to_encode(e: std::io::Error) -> Error {
    Error::encode(e.to_string())
}

fn unsupported_auth(method: &str) -> Error {
    Error::auth(format!(
        "the server asks for {method} authentication, which duet does not support"
    ))
}

fn describe(m: &Message) -> &'static str {
    match m {
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::RowDescription(_) => "RowDescription",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::BackendKeyData(_) => "BackendKeyData",
        _ => "(other)",
    }
}
