//! Transactions: `atomic(op)`, the drivers' interactive `atomic(|tx| …)`,
//! and what they tell about a commit whose answer was lost.

use std::sync::Arc;
use std::time::Instant;

use super::{BoxOp, HasConnection, Operation, Query, Single, Step};
use crate::connection::{Request, Response, Ticket, TransactionStatus, TxOutcome, XID_PROBE};
use crate::error::sqlstate;
use crate::params;
use crate::row::SimpleMessage;
use crate::{Connection, Error};

/// How a transaction runs: `BEGIN ISOLATION LEVEL … READ ONLY DEFERRABLE`.
/// Options apply to the outermost transaction (a nested one is a
/// savepoint, which has none).
///
/// ```
/// use duet_core::ops::{atomic, query, IsolationLevel, TxOptions};
/// let report = atomic(query("SELECT sum(balance) FROM accounts", &[]).rows())
///     .options(TxOptions::new().isolation(IsolationLevel::Serializable).read_only().deferrable());
/// # let _ = report;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOptions {
    pub isolation: Option<IsolationLevel>,
    pub read_only: bool,
    pub deferrable: bool,
}

/// PostgreSQL's isolation levels (`READ UNCOMMITTED` behaves as
/// `READ COMMITTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl TxOptions {
    pub fn new() -> TxOptions {
        TxOptions::default()
    }
    pub fn isolation(mut self, level: IsolationLevel) -> TxOptions {
        self.isolation = Some(level);
        self
    }
    pub fn read_only(mut self) -> TxOptions {
        self.read_only = true;
        self
    }
    pub fn deferrable(mut self) -> TxOptions {
        self.deferrable = true;
        self
    }

    fn is_default(&self) -> bool {
        *self == TxOptions::default()
    }

    /// `BEGIN` with these options.
    fn begin_sql(&self) -> String {
        let mut s = String::from("BEGIN");
        if let Some(level) = self.isolation {
            s.push_str(match level {
                IsolationLevel::ReadUncommitted => " ISOLATION LEVEL READ UNCOMMITTED",
                IsolationLevel::ReadCommitted => " ISOLATION LEVEL READ COMMITTED",
                IsolationLevel::RepeatableRead => " ISOLATION LEVEL REPEATABLE READ",
                IsolationLevel::Serializable => " ISOLATION LEVEL SERIALIZABLE",
            });
        }
        if self.read_only {
            s.push_str(" READ ONLY");
        }
        if self.deferrable {
            s.push_str(" DEFERRABLE");
        }
        s
    }
}

/// Whether running the same transaction again may succeed: a
/// serialization failure (40001) or a deadlock (40P01) rolled it back.
/// (An outcome in doubt is not retried: the first run may have committed.)
pub fn retryable(e: &Error) -> bool {
    matches!(
        e.code(),
        Some(sqlstate::SERIALIZATION_FAILURE) | Some(sqlstate::DEADLOCK_DETECTED)
    )
}

/// Runs the operation `make` builds, and builds and runs it again while it
/// fails with a [`retryable`] error, at most `attempts` times in all. For
/// transactions under `SERIALIZABLE` or that may deadlock:
///
/// ```
/// use duet_core::ops::{atomic, query, retry, IsolationLevel, TxOptions};
/// let transfer = retry(5, || {
///     atomic(query("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).affected())
///         .options(TxOptions::new().isolation(IsolationLevel::Serializable))
/// });
/// # let _ = transfer;
/// ```
pub fn retry<F, O>(attempts: u32, make: F) -> Retry<F, O>
where
    F: FnMut() -> O,
    O: Operation,
{
    Retry {
        make,
        op: None,
        left: attempts.max(1),
    }
}

/// See [`retry`].
pub struct Retry<F, O> {
    make: F,
    op: Option<O>,
    left: u32,
}

impl<F, O> Operation for Retry<F, O>
where
    F: FnMut() -> O,
    O: Operation,
{
    type Output = O::Output;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<O::Output> {
        loop {
            let op = self.op.get_or_insert_with(&mut self.make);
            match op.poll(conn, now) {
                Step::Ready(Err(e)) if self.left > 1 && retryable(&e) => {
                    self.left -= 1;
                    self.op = None;
                }
                other => {
                    if let Step::Ready(_) = other {
                        self.op = None;
                        self.left = 0;
                    }
                    return other;
                }
            }
        }
    }

    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(op) = &mut self.op {
            op.abandon(conn);
        }
    }
}

/// One level of transaction nesting: depth 0 is `BEGIN`/`COMMIT`, deeper
/// levels are savepoints. Shared by [`atomic`] and the drivers' interactive
/// transactions ([`TxGuard`]), so both nest the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope(u32);

impl Scope {
    /// The scope a new transaction opens on `conn`. Inside a transaction
    /// the application opened itself, BEGIN would only warn and COMMIT would
    /// end the outer transaction: nest with a savepoint instead.
    fn next(conn: &Connection) -> Scope {
        Scope(conn.atomic_depth() + u32::from(conn.atomic_depth() == 0 && conn.transaction_open()))
    }
    fn savepoint(self) -> String {
        format!("duet_sp_{}", self.0)
    }
    fn begin_sql(self, options: &TxOptions) -> Result<String, Error> {
        if self.0 == 0 {
            Ok(options.begin_sql())
        } else if options.is_default() {
            Ok(format!("SAVEPOINT {}", self.savepoint()))
        } else {
            Err(Error::misuse(
                "isolation level, read only and deferrable apply to the outermost transaction; \
                 this one is nested (a savepoint)",
            ))
        }
    }
    fn commit_sql(self) -> String {
        if self.0 == 0 {
            "COMMIT".to_string()
        } else {
            format!("RELEASE SAVEPOINT {}", self.savepoint())
        }
    }
    fn rollback_sql(self) -> String {
        if self.0 == 0 {
            "ROLLBACK".to_string()
        } else {
            let sp = self.savepoint();
            format!("ROLLBACK TO SAVEPOINT {sp}; RELEASE SAVEPOINT {sp}")
        }
    }
    /// Queues the rollback for work nobody waits for any more.
    fn submit_detached_rollback(self, conn: &mut Connection) {
        if self.0 == 0 {
            conn.submit_detached_end(&self.rollback_sql());
        } else {
            conn.submit_detached(&self.rollback_sql());
        }
    }
}

// ---- commit truth ----

/// Whether commit truth is on (`commit_lookup`, on by default) and the
/// server has the functions it needs (10+).
fn probe_supported(conn: &Connection) -> bool {
    conn.config().commit_lookup
        && conn
            .parameter("server_version")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok())
            .is_some_and(|major| major >= 10)
}

/// What a top-level transaction learns before its COMMIT leaves, so that a
/// lost answer to that COMMIT can be resolved rather than guessed: the
/// transaction's id, asked for right behind its first statement (known as
/// early as the first write) and again just before COMMIT (for work whose
/// first statement wrote nothing), in the same flights.
#[derive(Default)]
struct CommitProbe {
    early: Option<Ticket>,
    early_answer: Option<Result<Option<i64>, Error>>,
    ticket: Option<Ticket>,
    answer: Option<Result<Option<i64>, Error>>,
    /// The id the driver is looking up on a new connection.
    looking_up: Option<i64>,
}

/// What a lost COMMIT came to.
enum Lost {
    /// Nothing was written: committed or not, the database is as it was,
    /// and the results the work already returned are true.
    NothingWritten,
    /// Waiting for the driver's lookup of the transaction's fate.
    LookingUp,
    Failed(Error),
}

impl CommitProbe {
    /// A top-level transaction begins: its first statement takes the
    /// early probe along. A probe an earlier transaction left unadopted is
    /// not this one's.
    fn begin(conn: &mut Connection) {
        if let Some(stale) = conn.take_early_probe() {
            conn.abandon(stale);
        }
        conn.probe_next_statement(probe_supported(conn));
    }

    /// Picks up the early probe once the first statement went out.
    fn adopt_early(&mut self, conn: &mut Connection) {
        if self.early.is_none() {
            self.early = conn.take_early_probe();
        }
    }

    /// The id as known so far.
    fn xid(&self) -> Option<i64> {
        match (&self.early_answer, &self.answer) {
            (Some(Ok(Some(x))), _) | (_, Some(Ok(Some(x)))) => Some(*x),
            _ => None,
        }
    }

    /// Sends the probe that goes just before COMMIT, unless the id is known.
    fn submit(&mut self, conn: &mut Connection, now: Instant) {
        conn.probe_next_statement(false);
        self.adopt_early(conn);
        self.collect(conn);
        if probe_supported(conn) && self.xid().is_none() {
            // Should it fail to encode, the commit goes on without truth.
            self.ticket = conn
                .submit_encoded(XID_PROBE, params::Encoded::default(), None, now)
                .ok();
        }
    }

    fn collect(&mut self, conn: &mut Connection) {
        let read = |r: Result<Response, Error>| {
            r.and_then(|resp| match resp {
                Response::Rows(q) => match q.rows.first() {
                    Some(row) => row.try_get::<Option<i64>>(0),
                    None => Err(Error::protocol("the transaction id query returned no row")),
                },
                _ => Err(Error::protocol("internal: the transaction id query gave no rows")),
            })
        };
        if let (Some(t), None) = (self.early, &self.early_answer) {
            self.early_answer = conn.take_result(t).map(read);
        }
        if let (Some(t), None) = (self.ticket, &self.answer) {
            self.answer = conn.take_result(t).map(read);
        }
    }

    /// The transaction ends without a lookup: forget the probes.
    fn abandon(&mut self, conn: &mut Connection) {
        conn.probe_next_statement(false);
        self.adopt_early(conn);
        for t in [self.early.take(), self.ticket.take()].into_iter().flatten() {
            conn.abandon(t);
        }
    }

    /// True when `commit` failed because the connection was lost after all
    /// of it had left and before the server's answer came: the server may
    /// or may not have committed. (An answer from the server, an error,
    /// is the truth; a COMMIT not wholly sent never ran.)
    fn lost(conn: &Connection, commit: Ticket, err: &Error) -> bool {
        conn.closed_reason().is_some() && !conn.never_sent(commit) && !matches!(err, Error::Db(_))
    }

    /// The server's own errors for the probes, if any: the real cause when
    /// a probe failed and took COMMIT down with it.
    fn error(&self) -> Option<&Error> {
        [&self.early_answer, &self.answer]
            .into_iter()
            .flatten()
            .find_map(|r| r.as_ref().err().filter(|e| matches!(e, Error::Db(_))))
    }

    /// The connection was lost after COMMIT left: find out what happened.
    fn judge(&mut self, conn: &mut Connection) -> Lost {
        self.collect(conn);
        if let Some(xid) = self.xid() {
            conn.request_outcome(xid);
            self.looking_up = Some(xid);
            return Lost::LookingUp;
        }
        match (&self.early_answer, &self.answer) {
            // The probe behind all the work saw no id: nothing was written.
            (_, Some(Ok(None))) => Lost::NothingWritten,
            // The id never arrived: nothing to look up.
            _ => Lost::Failed(Error::InDoubt(None)),
        }
    }

    /// The driver's answer to the lookup: the transaction id when it
    /// committed. `None` while it is still pending.
    fn outcome(&mut self, conn: &mut Connection) -> Option<Result<i64, Error>> {
        let xid = self.looking_up?;
        let r = conn.take_outcome()?;
        self.looking_up = None;
        Some(match r {
            Ok(TxOutcome::Committed) => Ok(xid),
            Ok(TxOutcome::Aborted) => Err(Error::closed(format!(
                "the connection was lost after COMMIT was sent; the server rolled transaction {xid} back"
            ))),
            Ok(TxOutcome::Unknown) | Err(_) => Err(Error::InDoubt(Some(xid))),
        })
    }
}

/// Looks up, on a connection of its own, what became of the transaction
/// `xid` whose COMMIT was sent on a connection that was lost: what a driver
/// runs when [`Connection::poll_outcome_query`] asks. While the old session
/// is still finishing (the server has not noticed it is gone), it asks
/// again every 50 ms; the driver's time limit bounds the wait.
pub fn tx_outcome(xid: i64) -> TxOutcomeLookup {
    TxOutcomeLookup {
        xid,
        rounds: 0,
        query: None,
    }
}

/// See [`tx_outcome`].
pub struct TxOutcomeLookup {
    xid: i64,
    rounds: u32,
    query: Option<Query<'static>>,
}

impl Operation for TxOutcomeLookup {
    type Output = TxOutcome;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<TxOutcome> {
        loop {
            let q = self.query.get_or_insert_with(|| {
                let sql = if self.rounds == 0 {
                    "SELECT pg_catalog.txid_status($1)"
                } else {
                    "SELECT pg_catalog.txid_status($1) FROM pg_catalog.pg_sleep(0.05)"
                };
                Query::values(sql, vec![Arc::new(self.xid)])
            });
            let result = match q.poll(conn, now) {
                Step::Pending => return Step::Pending,
                Step::Ready(r) => r,
            };
            self.query = None;
            let status = result.and_then(|q| match q.rows.first() {
                Some(row) => row.try_get::<Option<String>>(0),
                None => Ok(None),
            });
            return Step::Ready(match status.as_ref().map(|s| s.as_deref()) {
                Ok(Some("committed")) => Ok(TxOutcome::Committed),
                Ok(Some("aborted")) => Ok(TxOutcome::Aborted),
                Ok(Some("in progress")) => {
                    self.rounds += 1;
                    continue;
                }
                Ok(_) => Ok(TxOutcome::Unknown),
                Err(e) => Err(e.clone()),
            });
        }
    }
    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(q) = &mut self.query {
            q.abandon(conn);
        }
    }
}

// ---- interactive transactions ----

/// An interactive transaction a driver's `atomic(|tx| …)` holds open while
/// the application's closure runs. `BEGIN` (or `SAVEPOINT`) is queued, not
/// awaited, so it travels with the closure's first statement. Dropped
/// without [`TxGuard::finish`] (a panic, a dropped future), it queues the
/// rollback, which the next request carries: no I/O in `drop`.
pub struct TxGuard<'c, C: HasConnection> {
    /// The client, for the closure to run statements on.
    pub client: &'c mut C,
    scope: Option<Scope>,
    /// The nesting depth to restore when this scope ends (not `scope - 1`:
    /// inside an application's own transaction the first scope is level 1).
    prev_depth: u32,
}

impl<'c, C: HasConnection> TxGuard<'c, C> {
    /// Begins (queues `BEGIN` with `options`, or a `SAVEPOINT` when
    /// nested); an error, and nothing sent, when options are asked of a
    /// nested transaction.
    pub fn begin(client: &'c mut C, options: &TxOptions) -> Result<Self, Error> {
        let conn = client.connection_mut();
        let scope = Scope::next(conn);
        let prev_depth = conn.atomic_depth();
        conn.submit_detached(&scope.begin_sql(options)?);
        if scope.0 == 0 {
            CommitProbe::begin(conn);
        }
        // Everything the closure runs belongs to this scope.
        conn.set_atomic_depth(scope.0 + 1);
        conn.set_active_depth(scope.0 + 1);
        Ok(TxGuard {
            client,
            scope: Some(scope),
            prev_depth,
        })
    }

    /// Ends the transaction: `COMMIT` (or `RELEASE SAVEPOINT`) when
    /// `commit`, else a rollback. The returned operation reports whether it
    /// worked; a failed commit (a deferred constraint, say) is an error,
    /// and a top-level COMMIT whose answer is lost with the connection is
    /// looked up rather than guessed ([`Error::InDoubt`] when it cannot be).
    pub fn finish(mut self, commit: bool) -> BoxOp<'static, ()> {
        let scope = self.scope.take().unwrap_or(Scope(0));
        let prev = self.prev_depth;
        let conn = self.client.connection_mut();
        conn.set_atomic_depth(prev);
        conn.set_active_depth(prev);
        if scope.0 == 0 {
            let mut probe = CommitProbe::default();
            if !commit {
                probe.abandon(conn);
            } else {
                return Box::new(Commit { probe, commit: None });
            }
        }
        let sql = if commit {
            scope.commit_sql()
        } else {
            scope.rollback_sql()
        };
        Box::new(EndScope {
            scope,
            sql: Some(sql),
            op: None,
        })
    }
}

/// What an interactive transaction returns: the closure's error if it
/// failed (the rollback's own outcome is secondary), else the commit's.
pub fn settle<T>(work: Result<T, Error>, end: Result<(), Error>) -> Result<T, Error> {
    let v = work?;
    end?;
    Ok(v)
}

impl<C: HasConnection> Drop for TxGuard<'_, C> {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            let conn = self.client.connection_mut();
            conn.set_atomic_depth(self.prev_depth);
            conn.set_active_depth(self.prev_depth);
            if scope.0 == 0 {
                CommitProbe::default().abandon(conn);
            }
            scope.submit_detached_rollback(conn);
        }
    }
}

/// The top-level COMMIT of an interactive transaction, with its probe.
struct Commit {
    probe: CommitProbe,
    commit: Option<Ticket>,
}

impl Operation for Commit {
    type Output = ();
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<()> {
        if let Some(r) = self.probe.outcome(conn) {
            return Step::Ready(r.map(|_| ()));
        }
        if self.probe.looking_up.is_some() {
            return Step::Pending;
        }
        let Some(commit) = self.commit else {
            // The probe goes in a sync group of its own, in the same flight:
            // should it fail, COMMIT still ends the transaction (answering
            // ROLLBACK). In a failed transaction there is nothing to learn.
            if conn.transaction_status() != TransactionStatus::Failed {
                self.probe.submit(conn, now);
            } else {
                self.probe.abandon(conn);
            }
            let submitted = conn.submit_control("COMMIT");
            return match submitted {
                Ok(t) => {
                    conn.ends_transaction(t);
                    self.commit = Some(t);
                    Step::Pending
                }
                Err(e) => Step::Ready(Err(e)),
            };
        };
        self.probe.collect(conn);
        let Some(r) = conn.take_result(commit) else {
            return Step::Pending;
        };
        match r {
            Ok(resp) => Step::Ready(commit_answer(resp).map_err(|e| self.probe.error().cloned().unwrap_or(e))),
            Err(e) if CommitProbe::lost(conn, commit, &e) => match self.probe.judge(conn) {
                Lost::NothingWritten => Step::Ready(Ok(())),
                Lost::LookingUp => Step::Pending,
                Lost::Failed(e) => Step::Ready(Err(e)),
            },
            Err(e) => Step::Ready(Err(e)),
        }
    }
    fn abandon(&mut self, conn: &mut Connection) {
        // A COMMIT that has not started to leave is taken back, and the
        // transaction rolled back: a dropped commit must not commit. One
        // never submitted rolls back too: nobody else will end it.
        self.probe.abandon(conn);
        for t in self.commit.into_iter() {
            conn.abandon(t);
        }
        match self.commit.take() {
            Some(t) if !conn.retract(t) => {}
            _ => Scope(0).submit_detached_rollback(conn),
        }
    }
}

/// The end of an interactive scope other than a top-level COMMIT: a
/// RELEASE, or a rollback. Dropped before it was sent, it still ends its
/// scope (a rollback, detached), since the guard has handed the scope over.
struct EndScope {
    scope: Scope,
    sql: Option<String>,
    op: Option<Single<'static, ()>>,
}

impl Operation for EndScope {
    type Output = ();
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<()> {
        if let Some(sql) = self.sql.take() {
            self.op = Some(simple_query_owned(sql));
        }
        match &mut self.op {
            Some(op) => op.poll(conn, now),
            None => Step::Ready(Err(Error::misuse("operation polled after it completed"))),
        }
    }
    fn abandon(&mut self, conn: &mut Connection) {
        match &mut self.op {
            Some(op) => op.abandon(conn),
            None if self.sql.take().is_some() => self.scope.submit_detached_rollback(conn),
            None => {}
        }
    }
}

/// A simple-protocol query owning its text.
fn simple_query_owned(sql: String) -> Single<'static, ()> {
    Single {
        request: Some(Box::new(move |c: &mut Connection, now| {
            c.submit(Request::simple(&sql), now)
        })),
        ticket: None,
        convert: |r| match r {
            Response::Simple(m)
                if m.iter()
                    .any(|m| matches!(m, SimpleMessage::CommandComplete(t) if t == "ROLLBACK")) =>
            {
                Err(commit_rolled_back())
            }
            _ => Ok(()),
        },
    }
}

/// A COMMIT's answer: PostgreSQL answers COMMIT in a failed transaction
/// with the tag `ROLLBACK` and no error.
fn commit_answer(resp: Response) -> Result<(), Error> {
    match resp {
        Response::Rows(q) if q.tag.as_deref() == Some("ROLLBACK") => Err(commit_rolled_back()),
        _ => Ok(()),
    }
}

/// The caller must not hear "committed" for a COMMIT that rolled back.
fn commit_rolled_back() -> Error {
    Error::Db(Box::new(crate::DbError {
        severity: "ERROR".into(),
        code: sqlstate::IN_FAILED_SQL_TRANSACTION.into(),
        message: "COMMIT rolled the transaction back: a statement in it had failed".into(),
        ..Default::default()
    }))
}

// ---- atomic ----

/// Runs `op` in a transaction: `BEGIN`, the work and `COMMIT` go out
/// together (one round trip when the work submits everything up front).
/// On error the transaction is rolled back and the error returned. Nested
/// inside another `atomic`, it uses a savepoint instead, queued with the
/// work, so nesting adds no round trip.
///
/// Beside other operations in a [`pipeline`](super::pipeline), a
/// transaction keeps its own outcome: what the pipeline submits while its
/// COMMIT has not gone out waits until it has, so nothing runs (and rolls
/// back) inside it by accident.
///
/// The result tells the truth about the commit:
/// - COMMIT goes out with the work only when nothing the client still has
///   to check can fail; behind a check that can (`.one()`, a decoding, a
///   hook) it waits for the check, so an `Err` always means nothing was
///   committed.
/// - Dropped (a dropped future, `run_steps` giving up) before its COMMIT
///   has started to leave, the COMMIT is taken back and the transaction
///   rolled back.
/// - When the connection is lost after COMMIT left, the transaction's id
///   (asked for in the same flight) is looked up on a new connection:
///   committed is `Ok`, rolled back an error, and if it cannot be known,
///   [`Error::InDoubt`].
///
/// ```
/// use duet_core::ops::{atomic, pipeline, query};
/// let (from, to, amount) = (1i32, 2i32, 10i64);
/// let (debit, credit): ([duet_core::Param; 2], [duet_core::Param; 2]) = ([&from, &amount], [&to, &amount]);
/// let transfer = atomic(pipeline((
///     query("UPDATE accounts SET balance = balance - $2 WHERE id = $1", &debit).affected(),
///     query("UPDATE accounts SET balance = balance + $2 WHERE id = $1", &credit).affected(),
/// )));
/// # let _ = transfer;
/// ```
pub fn atomic<O: Operation>(op: O) -> Atomic<O> {
    Atomic {
        op,
        options: TxOptions::default(),
        depth: 0,
        prev_depth: 0,
        begin: None,
        begin_result: None,
        output: None,
        probe: CommitProbe::default(),
        commit: None,
        commit_result: None,
        rollback: None,
        started: false,
        finished: false,
    }
}

/// See [`atomic`].
pub struct Atomic<O: Operation> {
    op: O,
    options: TxOptions,
    depth: u32,
    /// The depth to restore when this transaction ends.
    prev_depth: u32,
    begin: Option<Ticket>,
    begin_result: Option<Result<(), Error>>,
    output: Option<Result<O::Output, Error>>,
    probe: CommitProbe,
    commit: Option<Ticket>,
    commit_result: Option<Result<(), Error>>,
    rollback: Option<(Ticket, Error)>,
    started: bool,
    finished: bool,
}

impl<O: Operation> Atomic<O> {
    /// Begins with these options (isolation level, read only, deferrable).
    pub fn options(mut self, options: TxOptions) -> Self {
        self.options = options;
        self
    }

    fn submit_commit(&mut self, conn: &mut Connection, now: Instant) -> Result<(), Error> {
        if self.depth == 0 {
            self.probe.submit(conn, now);
        }
        let t = conn.submit_control(&Scope(self.depth).commit_sql())?;
        if self.depth == 0 {
            conn.ends_transaction(t);
        }
        self.commit = Some(t);
        conn.set_atomic_depth(self.prev_depth);
        Ok(())
    }

    fn rollback_sql(&self) -> String {
        Scope(self.depth).rollback_sql()
    }

    fn done(&mut self, r: Result<O::Output, Error>) -> Step<O::Output> {
        self.finished = true;
        Step::Ready(r)
    }

    /// Ends with `r`, the transaction over: no probe of it stays armed.
    fn end(&mut self, conn: &mut Connection, r: Result<O::Output, Error>) -> Step<O::Output> {
        if self.depth == 0 && self.started {
            self.probe.abandon(conn);
        }
        self.done(r)
    }

    /// The work's output once the commit is known to have happened (`xid`)
    /// or to make no difference (`None`: nothing was written). When the
    /// transaction committed but the connection died before all of the
    /// work's results arrived, that is said, not hidden behind `Closed`.
    fn committed(&mut self, xid: Option<i64>) -> Step<O::Output> {
        let out = match (self.begin_result.take(), self.output.take(), xid) {
            (Some(Ok(())), Some(Ok(v)), _) => Ok(v),
            (_, _, Some(xid)) => Err(Error::CommittedWithoutResult(xid)),
            (Some(Err(e)), _, None) | (_, Some(Err(e)), None) => Err(e),
            _ => Err(Error::InDoubt(None)),
        };
        self.done(out)
    }
}

impl<O: Operation> Operation for Atomic<O> {
    type Output = O::Output;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<O::Output> {
        if self.finished {
            return Step::Ready(Err(Error::misuse("operation polled after it completed")));
        }
        if let Some(r) = self.probe.outcome(conn) {
            return match r {
                Ok(xid) => self.committed(Some(xid)),
                Err(e) => self.end(conn, Err(e)),
            };
        }
        if self.probe.looking_up.is_some() {
            return Step::Pending;
        }
        if let Some((t, err)) = &self.rollback {
            return match conn.take_result(*t) {
                None => Step::Pending,
                Some(Ok(_)) => {
                    let e = err.clone();
                    self.end(conn, Err(e))
                }
                // A failed rollback leaves the session in doubt: report both.
                Some(Err(re)) => {
                    let e = Error::closed(format!("{err}; then the rollback failed too: {re}"));
                    self.end(conn, Err(e))
                }
            };
        }
        if !self.started && conn.foreign_transaction_open() {
            return Step::Pending;
        }
        conn.begin_batch();
        if !self.started {
            self.started = true;
            // Inside a transaction the application opened itself, BEGIN
            // would only warn and COMMIT would end the outer transaction:
            // nest with a savepoint instead.
            self.prev_depth = conn.atomic_depth();
            self.depth = Scope::next(conn).0;
            match Scope(self.depth)
                .begin_sql(&self.options)
                .and_then(|sql| conn.submit_control(&sql))
            {
                Ok(t) => {
                    self.begin = Some(t);
                    if self.depth == 0 {
                        CommitProbe::begin(conn);
                    }
                }
                Err(e) => {
                    conn.end_batch();
                    return self.end(conn, Err(e));
                }
            }
            conn.set_atomic_depth(self.depth + 1);
        }
        if self.output.is_none() {
            let outer = conn.active_depth();
            conn.set_active_depth(self.depth + 1);
            let step = self.op.poll(conn, now);
            conn.set_active_depth(outer);
            if self.depth == 0 {
                self.probe.adopt_early(conn);
            }
            if let Step::Ready(r) = step {
                self.output = Some(r);
            }
        }
        let work_ok = !matches!(self.output, Some(Err(_)));
        if self.commit.is_none() && work_ok && (self.output.is_some() || self.op.submitted_all()) {
            if let Err(e) = self.submit_commit(conn, now) {
                self.output = Some(Err(e));
            }
        }
        conn.end_batch();

        if let (Some(t), None) = (self.begin, &self.begin_result) {
            if let Some(r) = conn.take_result(t) {
                self.begin_result = Some(r.map(|_| ()));
            }
        }
        self.probe.collect(conn);
        if let (Some(t), None) = (self.commit, &self.commit_result) {
            if let Some(r) = conn.take_result(t) {
                self.commit_result = Some(r.and_then(commit_answer));
            }
        }
        // The connection was lost after COMMIT left: find out, not guess.
        if let (0, Some(commit), Some(Err(e))) = (self.depth, self.commit, &self.commit_result) {
            if CommitProbe::lost(conn, commit, e) {
                return match self.probe.judge(conn) {
                    Lost::NothingWritten => self.committed(None),
                    Lost::LookingUp => Step::Pending,
                    Lost::Failed(e) => self.end(conn, Err(e)),
                };
            }
        }
        let (Some(begin), Some(output)) = (&self.begin_result, &self.output) else {
            return Step::Pending;
        };
        if begin.is_ok() && output.is_ok() && self.commit_result.is_none() {
            return Step::Pending;
        }
        // The first real error in the order things were sent, not one that
        // only follows from it (a deferred constraint failing COMMIT makes
        // the server void BEGIN and the work too).
        let errors = [
            begin.as_ref().err(),
            output.as_ref().err(),
            self.probe.error(),
            self.commit_result.as_ref().and_then(|r| r.as_ref().err()),
        ];
        let error = errors
            .iter()
            .flatten()
            .find(|e| !super::is_consequence(e))
            .or_else(|| errors.iter().flatten().next())
            .map(|e| (*e).clone());
        match error {
            None => {
                let out = self.output.take().expect("output present");
                self.end(conn, out)
            }
            Some(e) => {
                if self.commit.is_none() {
                    conn.set_atomic_depth(self.prev_depth);
                }
                let committed_or_gone = self.depth == 0
                    && self.commit_result.as_ref().is_some_and(|r| r.is_err())
                    && conn.transaction_status() == TransactionStatus::Idle;
                // Only a closed socket makes the rollback pointless: a client-side
                // error of a fatal-looking kind still leaves a live transaction.
                if committed_or_gone || conn.closed_reason().is_some() {
                    return self.end(conn, Err(e));
                }
                let sql = self.rollback_sql();
                match conn.submit(Request::simple(&sql), now) {
                    Ok(t) => {
                        if self.depth == 0 {
                            conn.ends_transaction(t);
                        }
                        self.rollback = Some((t, e));
                        Step::Pending
                    }
                    Err(re) => self.end(conn, Err(re)),
                }
            }
        }
    }

    fn submitted_all(&self) -> bool {
        self.commit.is_some() || self.finished
    }

    fn abandon(&mut self, conn: &mut Connection) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.output.is_none() {
            self.op.abandon(conn);
        }
        // A COMMIT none of whose bytes has left is taken back: a dropped
        // transaction must not commit because its COMMIT was still queued.
        if let Some(t) = self.commit {
            if conn.retract(t) {
                self.commit = None;
            }
        }
        if self.depth == 0 {
            self.probe.abandon(conn);
        }
        for t in [self.begin, self.commit].into_iter().flatten() {
            conn.abandon(t);
        }
        if let Some((t, _)) = self.rollback.take() {
            conn.abandon(t);
            return;
        }
        if self.started && self.probe.looking_up.is_none() {
            conn.set_atomic_depth(self.prev_depth);
            conn.set_active_depth(self.prev_depth);
            // Roll back whatever this transaction did: harmless (a warning)
            // after a COMMIT. After a RELEASE the savepoint is gone and the
            // work belongs to the enclosing transaction; a rollback to it
            // would fail that transaction, so leave the work to its owner.
            if self.depth == 0 || self.commit.is_none() {
                Scope(self.depth).submit_detached_rollback(conn);
            }
        }
    }
}
