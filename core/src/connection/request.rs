//! The sending side: requests are encoded into the send buffer and queued
//! for their responses, in batches (sync groups) or alone; detached and
//! transaction-control submits, taking back unsent statements, the
//! transaction-id probe, and closing statements nobody holds any more.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use postgres_types::Type;

use super::{
    io_to_encode, Connection, Entry, Phase, Portal, PrepareState, Request, RequestKind, SimpleState, StmtState, Ticket,
    XID_PROBE,
};
use crate::cache::CacheLookup;
use crate::params::{self, Encoded};
use crate::row::maybe_learnt;
use crate::{trace, Error};

impl Connection {
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

    /// The types this session looked up, for parameter inference.
    pub(crate) fn learned_types(&self) -> &[Type] {
        self.types.learned()
    }

    /// Submits a statement whose parameters are already encoded (the path
    /// [`crate::ops::Query`] takes after inferring the parameter types).
    pub(crate) fn submit_encoded(
        &mut self,
        sql: &str,
        enc: Encoded,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<Ticket, Error> {
        self.now = now;
        self.submit_request(&Request {
            kind: RequestKind::Encoded(sql, enc),
            deadline,
        })
    }

    pub(super) fn end_request(&mut self, buf: &mut BytesMut) {
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
        // A copy still taking data sends the Sync itself when it ends.
        if self.batch_depth == 0 && self.unsynced && self.copy_in.is_none() {
            self.push_sync();
            self.send_type_lookup();
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
    pub fn submit(&mut self, req: Request<'_>, now: Instant) -> Result<Ticket, Error> {
        self.now = now;
        self.submit_request(&req)
    }

    fn submit_request(&mut self, req: &Request<'_>) -> Result<Ticket, Error> {
        if let Phase::Closed(e) = &self.phase {
            return Err(e.clone());
        }
        self.refuse_during_copy()?;
        self.forget_stale_types();

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
        if let Some(span) = trace::statement(req.kind.sql(), &self.config, self.now) {
            self.traces.push((ticket, span));
        }
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
        if let RequestKind::Query(sql, _)
        | RequestKind::Encoded(sql, _)
        | RequestKind::Prepare(sql, _)
        | RequestKind::BindPortal(sql, _, _) = req.kind
        {
            refuse_stdio_copy(sql)?;
        }
        if !matches!(
            req.kind,
            RequestKind::Query(..) | RequestKind::Encoded(..) | RequestKind::BindPortal(..)
        ) {
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
                let enc = match params::encode_inferred(params, self.cache.param_hint(sql), self.types.learned())? {
                    Some(e) => e,
                    None => {
                        return Err(Error::misuse(
                            "a parameter's type cannot be inferred; prepare the statement first",
                        ))
                    }
                };
                self.encode_query(sql, &enc, ticket, buf, None)?;
            }
            RequestKind::Encoded(sql, ref enc) => self.encode_query(sql, enc, ticket, buf, None)?,
            RequestKind::BindPortal(sql, ref enc, portal) => self.encode_query(sql, enc, ticket, buf, Some(portal))?,
            RequestKind::FetchPortal(portal, max_rows) => {
                let start = buf.len();
                frontend::execute(portal.name(), max_rows as i32, buf).map_err(io_to_encode)?;
                let span = self.span_of(start, buf.len());
                let columns = Some(portal.0.columns.clone());
                self.queue
                    .push_back(Entry::Stmt(Box::new(StmtState::plain(ticket, false, columns, span))));
            }
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
                let enc = params::encode_typed(params, stmt.params()).inspect_err(|_| {
                    if stmt.params().iter().any(maybe_learnt) {
                        self.learnt_type_refused();
                    }
                })?;
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
                    sql: sql.into(),
                    parsed: false,
                    params: None,
                })));
            }
        }
        self.end_request(buf);
        Ok(())
    }

    /// `Parse` (unless cached), `Bind`, `Describe` (unless the columns are
    /// cached) and `Execute`; or, binding to `portal`, `Bind` and `Describe`
    /// of that portal, not run yet.
    fn encode_query(
        &mut self,
        sql: &str,
        enc: &Encoded,
        ticket: Ticket,
        buf: &mut BytesMut,
        portal: Option<&str>,
    ) -> Result<(), Error> {
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
        params::write_bind(portal.unwrap_or(""), &name, enc, buf)?;
        match portal {
            Some(p) => frontend::describe(b'P', p, buf).map_err(io_to_encode)?,
            None => {
                if columns.is_none() {
                    frontend::describe(b'P', "", buf).map_err(io_to_encode)?;
                }
                frontend::execute("", 0, buf).map_err(io_to_encode)?;
            }
        }
        let columns = if portal.is_some() { None } else { columns };
        // Cached only once everything was encoded: a failed submit leaves
        // no entry behind.
        let parse_sent = parses.is_some();
        let parses = parses.filter(|n| !n.is_empty());
        if let Some(name) = &parses {
            self.cache.insert(sql, enc.oids().collect(), name.clone());
        }
        self.queue.push_back(Entry::Stmt(Box::new(StmtState {
            ticket,
            learns: if parse_sent || columns.is_some() || portal.is_some() {
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
            copy: super::copy::CopyRole::None,
            binds: portal.map(|p| (Arc::from(p), Arc::from(sql))),
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
        if start < self.committed_to_wire() || s.parses.is_some() {
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
        self.traces.retain(|(x, _)| *x != t);
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

    pub(super) fn push_sync(&mut self) {
        let buf = self.send_buf();
        frontend::sync(buf);
        self.queue.push_back(Entry::Sync);
        self.unsynced = false;
    }

    /// Forgets a cached statement that the server no longer accepts (its
    /// result type changed, or it was deallocated), closing it on the
    /// server. Operations call this before they retry.
    pub fn forget_statement(&mut self, sql: &str) {
        let names = self.cache.remove_sql(sql);
        if matches!(self.phase, Phase::Closed(_)) {
            return;
        }
        if self.copy_in.is_some() {
            // Closed on the server with the next request instead.
            if let Ok(mut v) = self.to_close.lock() {
                v.extend(names.iter().map(|n| n.to_string()));
            }
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

/// Whether a statement surely takes a snapshot when it runs: a query or a
/// data-changing statement, by its first word.
fn takes_snapshot(sql: &str) -> bool {
    let word = first_word(sql);
    [
        "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "MERGE",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w))
}

/// `COPY … FROM STDIN` or `TO STDOUT` sent as an ordinary statement would
/// put the server in copy mode while the statements pipelined behind it
/// arrive: refused before it leaves, naming the calls that run it.
fn refuse_stdio_copy(sql: &str) -> Result<(), Error> {
    if !first_word(sql).eq_ignore_ascii_case("COPY") {
        return Ok(());
    }
    let words = sql.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
    for w in words {
        if w.eq_ignore_ascii_case("STDIN") {
            return Err(Error::misuse("COPY … FROM STDIN runs through copy_in, not query"));
        }
        if w.eq_ignore_ascii_case("STDOUT") {
            return Err(Error::misuse("COPY … TO STDOUT runs through copy_out, not query"));
        }
    }
    Ok(())
}

/// A statement's first word, comments and opening parentheses skipped.
pub(super) fn first_word(sql: &str) -> &str {
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
    &rest[..len]
}

/// A statement's text that cannot be sent: a NUL byte is named as such,
/// not as a parameter that failed to encode.
pub(super) fn sql_error(sql: &str, e: std::io::Error) -> Error {
    match sql.find('\0') {
        Some(at) => Error::invalid(format!(
            "the SQL text has a NUL byte at byte {at}; PostgreSQL cannot take one in a statement"
        )),
        None => Error::encode(format!("statement text: {e}")),
    }
}

impl Connection {
    /// Binds `sql` with its encoded parameters to a new portal of the open
    /// transaction (see [`crate::ops::portal`]).
    pub(crate) fn submit_bind_portal(&mut self, sql: &str, enc: Encoded, now: Instant) -> Result<Ticket, Error> {
        if !self.transaction_open() && self.atomic_depth == 0 {
            return Err(Error::misuse(
                "a portal lasts until its transaction ends: open one (atomic, or BEGIN) first",
            ));
        }
        self.now = now;
        self.next_portal += 1;
        let name = format!("duet_c{}", self.next_portal);
        self.submit_request(&Request {
            kind: RequestKind::BindPortal(sql, enc, &name),
            deadline: None,
        })
    }

    /// Runs `portal` for at most `max_rows` more rows (0: all that are left).
    pub(crate) fn submit_fetch(&mut self, portal: &Portal, max_rows: u32, now: Instant) -> Result<Ticket, Error> {
        self.now = now;
        self.submit_request(&Request {
            kind: RequestKind::FetchPortal(portal, max_rows),
            deadline: None,
        })
    }
}
