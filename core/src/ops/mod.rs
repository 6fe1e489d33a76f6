//! Layer 2: operations, any unit of database work, written once and pumped
//! by either driver. An operation submits every request it can before it
//! waits, so composing operations ([`pipeline`], [`atomic`]) composes their
//! round trips too.

use std::borrow::Cow;
use std::time::Instant;

use postgres_types::Type;

use crate::connection::{QueryResult, Request, Response, Statement, Ticket, TransactionStatus};
use crate::error::sqlstate;
use crate::orm::Value;
use crate::params::{self, Param, ParamSource};
use crate::row::{Row, SimpleMessage};
use crate::{Connection, Error};

/// The outcome of polling an operation.
#[derive(Debug)]
pub enum Step<T> {
    Ready(Result<T, Error>),
    Pending,
}

/// A unit of database work over a [`Connection`], independent of I/O.
///
/// `poll` submits requests and collects results; it never blocks. A driver
/// calls it, moves bytes, and calls it again until it is `Ready`.
pub trait Operation {
    type Output;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<Self::Output>;

    /// True once every request this operation will ever send has been
    /// submitted, nothing it already knows of has failed, and nothing the
    /// client still has to check of the results can fail (`.one()` finding
    /// no row, a decoding, a hook): a transaction around it may then queue
    /// its `COMMIT` behind it without waiting for results. Where a check
    /// can fail, COMMIT waits for it, so that a transaction never commits
    /// work its caller is told failed.
    fn submitted_all(&self) -> bool {
        false
    }

    /// The caller dropped this operation before it finished: give up its
    /// tickets (their responses are discarded) and undo anything it opened.
    fn abandon(&mut self, conn: &mut Connection);

    /// Transforms the output. `f` may fail, so a transaction around the
    /// result waits for it before it commits; see [`Map::infallible`].
    fn map<F, U>(self, f: F) -> Map<Self, F>
    where
        Self: Sized,
        F: FnMut(Self::Output) -> Result<U, Error>,
    {
        Map {
            op: self,
            f,
            checks: true,
        }
    }
}

impl<O: Operation + ?Sized> Operation for Box<O> {
    type Output = O::Output;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<O::Output> {
        (**self).poll(conn, now)
    }
    fn submitted_all(&self) -> bool {
        (**self).submitted_all()
    }
    fn abandon(&mut self, conn: &mut Connection) {
        (**self).abandon(conn)
    }
}

/// See [`Operation::map`].
pub struct Map<O, F> {
    op: O,
    f: F,
    /// `f` can fail: a transaction around this must not commit before it ran.
    checks: bool,
}

impl<O, F> Map<O, F> {
    /// Declares that `f` never returns an error (it only reshapes the
    /// output), so a transaction around this need not wait for it before
    /// queuing its `COMMIT`.
    pub fn infallible(mut self) -> Self {
        self.checks = false;
        self
    }

    /// The operation being mapped (to inspect the statement it sends).
    pub fn inner(&self) -> &O {
        &self.op
    }
}

impl<O, F, U> Operation for Map<O, F>
where
    O: Operation,
    F: FnMut(O::Output) -> Result<U, Error>,
{
    type Output = U;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<U> {
        match self.op.poll(conn, now) {
            Step::Ready(r) => Step::Ready(r.and_then(&mut self.f)),
            Step::Pending => Step::Pending,
        }
    }
    fn submitted_all(&self) -> bool {
        !self.checks && self.op.submitted_all()
    }
    fn abandon(&mut self, conn: &mut Connection) {
        self.op.abandon(conn)
    }
}

/// See [`then`] and [`then_result`].
pub struct Then<A: Operation, F, B> {
    first: Option<A>,
    next: Option<F>,
    second: Option<B>,
}

/// Runs `first`, then the operation `next` builds from its output: how a
/// multi-step operation (a prefetch whose second query needs the first
/// result) is composed. The second step goes out as soon as the first
/// result is in, with no driver involvement. An error from `first` is
/// returned as is.
pub fn then<A, F, B>(first: A, next: F) -> impl Operation<Output = B::Output>
where
    A: Operation,
    F: FnOnce(A::Output) -> Result<B, Error>,
    B: Operation,
{
    then_result(first, move |r: Result<A::Output, Error>| r.and_then(next))
}

/// Like [`then`], but `next` also sees `first`'s error and may recover from
/// it (retry after a unique violation, say).
pub fn then_result<A, F, B>(first: A, next: F) -> Then<A, F, B>
where
    A: Operation,
    F: FnOnce(Result<A::Output, Error>) -> Result<B, Error>,
    B: Operation,
{
    Then {
        first: Some(first),
        next: Some(next),
        second: None,
    }
}

impl<A, F, B> Operation for Then<A, F, B>
where
    A: Operation,
    F: FnOnce(Result<A::Output, Error>) -> Result<B, Error>,
    B: Operation,
{
    type Output = B::Output;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<B::Output> {
        if let Some(first) = &mut self.first {
            let out = match first.poll(conn, now) {
                Step::Pending => return Step::Pending,
                Step::Ready(r) => r,
            };
            self.first = None;
            let Some(next) = self.next.take() else {
                return Step::Ready(Err(Error::misuse("operation polled after it completed")));
            };
            match next(out) {
                Ok(b) => self.second = Some(b),
                Err(e) => return Step::Ready(Err(e)),
            }
        }
        match &mut self.second {
            Some(second) => {
                let step = second.poll(conn, now);
                if matches!(step, Step::Ready(_)) {
                    self.second = None;
                }
                step
            }
            None => Step::Ready(Err(Error::misuse("operation polled after it completed"))),
        }
    }
    fn submitted_all(&self) -> bool {
        self.first.is_none() && self.second.as_ref().is_none_or(|s| s.submitted_all())
    }
    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(a) = &mut self.first {
            a.abandon(conn);
        }
        if let Some(b) = &mut self.second {
            b.abandon(conn);
        }
        self.first = None;
        self.second = None;
    }
}

/// See [`lazy`].
pub struct Lazy<F, O> {
    make: Option<F>,
    op: Option<O>,
}

/// An operation built when it is first polled, not when it is created: the
/// ORM runs model hooks and renders SQL here, so an operation that is never
/// run never calls a hook.
pub fn lazy<F, O>(make: F) -> Lazy<F, O>
where
    F: FnOnce() -> Result<O, Error>,
    O: Operation,
{
    Lazy {
        make: Some(make),
        op: None,
    }
}

impl<F, O> Operation for Lazy<F, O>
where
    F: FnOnce() -> Result<O, Error>,
    O: Operation,
{
    type Output = O::Output;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<O::Output> {
        if let Some(make) = self.make.take() {
            match make() {
                Ok(op) => self.op = Some(op),
                Err(e) => return Step::Ready(Err(e)),
            }
        }
        match &mut self.op {
            Some(op) => op.poll(conn, now),
            None => Step::Ready(Err(Error::misuse("operation polled after it completed"))),
        }
    }
    fn submitted_all(&self) -> bool {
        self.make.is_none() && self.op.as_ref().is_none_or(|o| o.submitted_all())
    }
    fn abandon(&mut self, conn: &mut Connection) {
        self.make = None;
        if let Some(op) = &mut self.op {
            op.abandon(conn);
        }
    }
}

/// The inner operation of a builder that is itself an operation (an
/// `Update`, a `BulkInsert`): built from the builder on the first poll, then
/// polled. What [`lazy`] does for a closure, for a struct that keeps its
/// builder methods.
pub struct Deferred<O>(Option<O>);

impl<O: Operation> Default for Deferred<O> {
    fn default() -> Self {
        Deferred(None)
    }
}

impl<O: Operation> Deferred<O> {
    /// Builds the operation if this is the first poll (`build` may finish
    /// early with an output or an error), then polls it.
    pub fn poll_with(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        build: impl FnOnce() -> Result<O, Step<O::Output>>,
    ) -> Step<O::Output> {
        if self.0.is_none() {
            match build() {
                Ok(op) => self.0 = Some(op),
                Err(early) => return early,
            }
        }
        self.0.as_mut().expect("built above").poll(conn, now)
    }
    pub fn submitted_all(&self) -> bool {
        self.0.as_ref().is_some_and(|o| o.submitted_all())
    }
    pub fn abandon(&mut self, conn: &mut Connection) {
        if let Some(op) = &mut self.0 {
            op.abandon(conn);
        }
    }
}

/// An operation behind a box, when branches build different operations.
pub type BoxOp<'a, T> = Box<dyn Operation<Output = T> + Send + 'a>;

/// An operation that is already finished: its output is ready without a
/// round trip (an empty prefetch, a pipeline branch with nothing to do).
pub struct Ready<T>(Option<Result<T, Error>>);

/// See [`Ready`].
pub fn ready<T>(r: Result<T, Error>) -> Ready<T> {
    Ready(Some(r))
}

impl<T> Operation for Ready<T> {
    type Output = T;
    fn poll(&mut self, _conn: &mut Connection, _now: Instant) -> Step<T> {
        Step::Ready(
            self.0
                .take()
                .unwrap_or_else(|| Err(Error::misuse("operation polled after it completed"))),
        )
    }
    fn submitted_all(&self) -> bool {
        true
    }
    fn abandon(&mut self, _conn: &mut Connection) {}
}

/// Waits for the session to be authenticated and ready.
pub struct Startup;

impl Operation for Startup {
    type Output = ();
    fn poll(&mut self, conn: &mut Connection, _now: Instant) -> Step<()> {
        if conn.is_ready() {
            Step::Ready(Ok(()))
        } else if let Some(e) = conn.closed_reason() {
            Step::Ready(Err(e.clone()))
        } else {
            Step::Pending
        }
    }
    fn submitted_all(&self) -> bool {
        true
    }
    fn abandon(&mut self, _conn: &mut Connection) {}
}

fn expect_rows(r: Result<Response, Error>) -> Result<QueryResult, Error> {
    match r? {
        Response::Rows(q) => Ok(q),
        _ => Err(Error::protocol("internal: a statement produced a non-row response")),
    }
}

/// Turns a statement's result into what the caller asked for.
pub type Convert<T> = fn(QueryResult) -> Result<T, Error>;

type Submit<'a> = Box<dyn FnOnce(&mut Connection, Instant) -> Result<Ticket, Error> + Send + 'a>;

enum QueryState {
    Start,
    Describing(Ticket),
    Running { ticket: Ticket, _stmt: Option<Statement> },
    Done,
}

/// One extended-protocol statement with bound parameters.
///
/// Sent in one round trip (`Parse`/`Bind`/`Describe`/`Execute`/`Sync`)
/// even the first time; later runs reuse the cached named statement. When a
/// parameter's type cannot be inferred from its Rust value, the statement is
/// described first (one more round trip). A cached statement the server
/// rejects because the table changed under it (SQLSTATE 0A000) or because
/// it was deallocated (26000) is re-prepared and retried once, outside a
/// transaction only (inside one, the transaction is already failed).
pub struct Query<'a> {
    sql: Cow<'a, str>,
    params: Params<'a>,
    deadline: Option<Instant>,
    retried: bool,
    state: QueryState,
}

/// Builds a [`Query`].
///
/// ```
/// use duet_core::ops::query;
/// let id = 7i32;
/// let params: [duet_core::Param; 1] = [&id];
/// let op = query("SELECT name FROM users WHERE id = $1", &params).one();
/// # let _ = op;
/// ```
pub fn query<'a>(sql: impl Into<Cow<'a, str>>, params: &'a [Param<'a>]) -> Query<'a> {
    Query {
        sql: sql.into(),
        params: Params::Borrowed(params),
        deadline: None,
        retried: false,
        state: QueryState::Start,
    }
}

impl<'a> Query<'a> {
    /// Same, owning its parameter list.
    pub fn owned(sql: impl Into<Cow<'a, str>>, params: Vec<Param<'a>>) -> Query<'a> {
        Query {
            sql: sql.into(),
            params: Params::Owned(params),
            deadline: None,
            retried: false,
            state: QueryState::Start,
        }
    }

    /// Same, owning its values: a `'static` operation (what the ORM builds).
    pub fn values(sql: impl Into<Cow<'a, str>>, values: Vec<Value>) -> Query<'a> {
        Query {
            sql: sql.into(),
            params: Params::Values(values),
            deadline: None,
            retried: false,
            state: QueryState::Start,
        }
    }

    /// Same, its parameters lent by `source` whenever it is encoded.
    pub fn from_source(sql: impl Into<Cow<'a, str>>, source: Box<dyn ParamSource>) -> Query<'a> {
        Query {
            sql: sql.into(),
            params: Params::Source(source),
            deadline: None,
            retried: false,
            state: QueryState::Start,
        }
    }

    /// Gives up at `deadline`: the server is asked to cancel and the query
    /// fails with [`Error::Timeout`].
    pub fn deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The statement's text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Hands each row to `f` as it arrives instead of collecting them: the
    /// memory a result takes stays bounded (about one socket read's worth
    /// of rows) however many rows come back. Outputs the number of rows.
    ///
    /// Rows handed to `f` before an error (a later failing row, a
    /// cancelled statement) are not taken back; an error from `f` fails the
    /// operation and the rest of the rows are discarded as they arrive.
    ///
    /// ```
    /// use duet_core::ops::query;
    /// let limit = 1_000_000i64;
    /// let params: [duet_core::Param; 1] = [&limit];
    /// let mut total = 0i64;
    /// let op = query("SELECT i FROM generate_series(1, $1) i", &params).for_each(|row| {
    ///     total += row.get::<i64>(0);
    ///     Ok(())
    /// });
    /// # let _ = op;
    /// ```
    pub fn for_each<F>(self, f: F) -> ForEach<'a, F>
    where
        F: FnMut(Row) -> Result<(), Error>,
    {
        ForEach {
            query: self,
            f,
            rows: 0,
            batch: Vec::new(),
            failed: None,
        }
    }

    /// All rows.
    pub fn rows(self) -> Map<Self, Convert<Vec<Row>>> {
        self.map((|r| Ok(r.rows)) as Convert<Vec<Row>>).infallible()
    }

    /// Exactly one row, else [`Error::NoRows`] / [`Error::TooManyRows`].
    pub fn one(self) -> Map<Self, Convert<Row>> {
        self.map(|r| {
            let n = r.rows.len();
            match n {
                0 => Err(Error::NoRows),
                1 => Ok(r.rows.into_iter().next().expect("one row")),
                _ => Err(Error::TooManyRows(n)),
            }
        })
    }

    /// At most one row.
    pub fn opt(self) -> Map<Self, Convert<Option<Row>>> {
        self.map(|r| {
            let n = r.rows.len();
            match n {
                0 | 1 => Ok(r.rows.into_iter().next()),
                _ => Err(Error::TooManyRows(n)),
            }
        })
    }

    /// The number of rows the statement affected.
    pub fn affected(self) -> Map<Self, Convert<u64>> {
        self.map((|r| Ok(r.rows_affected())) as Convert<u64>).infallible()
    }

    fn start(&mut self, conn: &mut Connection, now: Instant) -> Result<(), Error> {
        let hint = conn.param_hint(&self.sql);
        match self.params.with(|p| params::encode_inferred(p, hint))? {
            Some(enc) => {
                let t = conn.submit_encoded(&self.sql, enc, self.deadline, now)?;
                self.state = QueryState::Running { ticket: t, _stmt: None };
            }
            None => {
                let t = conn.submit(Request::prepare(&self.sql, &[]).deadline(self.deadline), now)?;
                self.state = QueryState::Describing(t);
            }
        }
        Ok(())
    }
}

impl Operation for Query<'_> {
    type Output = QueryResult;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<QueryResult> {
        loop {
            match &self.state {
                QueryState::Start => {
                    if conn.foreign_transaction_open() {
                        return Step::Pending;
                    }
                    if let Err(e) = self.start(conn, now) {
                        self.state = QueryState::Done;
                        return Step::Ready(Err(e));
                    }
                    return Step::Pending;
                }
                QueryState::Describing(t) => {
                    if conn.foreign_transaction_open() {
                        return Step::Pending;
                    }
                    let Some(r) = conn.take_result(*t) else {
                        return Step::Pending;
                    };
                    let stmt = match r {
                        Ok(Response::Prepared(s)) => s,
                        Ok(_) => return self.finish(Err(Error::protocol("internal: prepare gave no statement"))),
                        Err(e) => return self.finish(Err(e)),
                    };
                    let deadline = self.deadline;
                    let submitted = self
                        .params
                        .with(|p| conn.submit(Request::execute(&stmt, p).deadline(deadline), now));
                    match submitted {
                        Ok(t) => {
                            self.state = QueryState::Running {
                                ticket: t,
                                _stmt: Some(stmt),
                            }
                        }
                        Err(e) => return self.finish(Err(e)),
                    }
                    return Step::Pending;
                }
                QueryState::Running { ticket, .. } => {
                    let Some(r) = conn.take_result(*ticket) else {
                        return Step::Pending;
                    };
                    let ticket = *ticket;
                    let r = expect_rows(r);
                    if let Err(e) = &r {
                        let stale = matches!(
                            e.code(),
                            Some(sqlstate::FEATURE_NOT_SUPPORTED) | Some(sqlstate::INVALID_SQL_STATEMENT_NAME)
                        );
                        if stale {
                            // The next run prepares afresh either way; this one is
                            // retried only when the failure touched nothing else
                            // (alone in its sync group, outside a transaction).
                            conn.forget_statement(&self.sql);
                            if conn.failed_alone(ticket)
                                && !self.retried
                                && conn.transaction_status() == TransactionStatus::Idle
                            {
                                self.retried = true;
                                self.state = QueryState::Start;
                                continue;
                            }
                        }
                    }
                    return self.finish(r);
                }
                QueryState::Done => return Step::Ready(Err(Error::misuse("operation polled after it completed"))),
            }
        }
    }

    fn submitted_all(&self) -> bool {
        matches!(self.state, QueryState::Running { .. } | QueryState::Done)
    }

    fn abandon(&mut self, conn: &mut Connection) {
        match std::mem::replace(&mut self.state, QueryState::Done) {
            QueryState::Describing(t) | QueryState::Running { ticket: t, .. } => conn.abandon(t),
            _ => {}
        }
    }
}

/// See [`Query::for_each`].
pub struct ForEach<'a, F> {
    query: Query<'a>,
    f: F,
    rows: u64,
    batch: Vec<Row>,
    /// The callback's error: the statement runs on, its rows are dropped.
    failed: Option<Error>,
}

impl<F: FnMut(Row) -> Result<(), Error>> ForEach<'_, F> {
    fn feed(&mut self) {
        for row in self.batch.drain(..) {
            if self.failed.is_some() {
                break;
            }
            self.rows += 1;
            if let Err(e) = (self.f)(row) {
                self.failed = Some(e);
            }
        }
        self.batch.clear();
    }
}

impl<F: FnMut(Row) -> Result<(), Error>> Operation for ForEach<'_, F> {
    type Output = u64;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<u64> {
        if let QueryState::Running { ticket, .. } = &self.query.state {
            conn.take_rows(*ticket, &mut self.batch);
            self.feed();
        }
        match self.query.poll(conn, now) {
            Step::Pending => Step::Pending,
            Step::Ready(r) => {
                let r = r.map(|mut q| {
                    self.batch.append(&mut q.rows);
                    self.feed();
                    self.rows
                });
                match self.failed.take() {
                    Some(e) => Step::Ready(Err(e)),
                    None => Step::Ready(r),
                }
            }
        }
    }

    /// Never: the callback may still fail on a row to come.
    fn submitted_all(&self) -> bool {
        false
    }

    fn abandon(&mut self, conn: &mut Connection) {
        self.query.abandon(conn)
    }
}

/// A statement's parameters: borrowed, a list of borrows, or owned values.
enum Params<'a> {
    Borrowed(&'a [Param<'a>]),
    Owned(Vec<Param<'a>>),
    Values(Vec<Value>),
    Source(Box<dyn ParamSource>),
}

impl Params<'_> {
    fn with<R>(&self, f: impl FnOnce(&[Param<'_>]) -> R) -> R {
        match self {
            Params::Borrowed(p) => f(p),
            Params::Owned(p) => f(p),
            Params::Values(v) => {
                let refs: Vec<Param<'_>> = v.iter().map(|v| &**v as Param<'_>).collect();
                f(&refs)
            }
            Params::Source(s) => f(&s.params()),
        }
    }
}

impl Query<'_> {
    fn finish(&mut self, r: Result<QueryResult, Error>) -> Step<QueryResult> {
        self.state = QueryState::Done;
        Step::Ready(r)
    }
}

/// A request whose result is taken as is: simple queries, prepares and
/// executions of prepared statements.
pub struct Single<'a, T> {
    request: Option<Submit<'a>>,
    ticket: Option<Ticket>,
    convert: fn(Response) -> Result<T, Error>,
}

impl<T> Operation for Single<'_, T> {
    type Output = T;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<T> {
        if self.request.is_some() && conn.foreign_transaction_open() {
            return Step::Pending;
        }
        if let Some(submit) = self.request.take() {
            match submit(conn, now) {
                Ok(t) => self.ticket = Some(t),
                Err(e) => return Step::Ready(Err(e)),
            }
            return Step::Pending;
        }
        let Some(t) = self.ticket else {
            return Step::Ready(Err(Error::misuse("operation polled after it completed")));
        };
        match conn.take_result(t) {
            Some(r) => {
                self.ticket = None;
                Step::Ready(r.and_then(self.convert))
            }
            None => Step::Pending,
        }
    }
    fn submitted_all(&self) -> bool {
        self.request.is_none()
    }
    fn abandon(&mut self, conn: &mut Connection) {
        self.request = None;
        if let Some(t) = self.ticket.take() {
            conn.abandon(t);
        }
    }
}

/// Runs a string of `;`-separated statements with the simple protocol (no
/// parameters; rows come back as text).
///
/// Refused inside a [`pipeline`] or [`atomic`] batch: a simple query is a
/// sync point of its own, so it would split the batch into separate
/// transactions and break its all-or-nothing.
pub fn simple_query<'a>(sql: &'a str, deadline: Option<Instant>) -> Single<'a, Vec<SimpleMessage>> {
    Single {
        request: Some(Box::new(move |c: &mut Connection, now| {
            if c.in_batch() {
                return Err(Error::misuse(
                    "a simple-protocol query cannot join a pipeline or atomic batch (it would end the batch's transaction): use query()",
                ));
            }
            c.submit(Request::simple(sql).deadline(deadline), now)
        })),
        ticket: None,
        convert: |r| match r {
            Response::Simple(m) => Ok(m),
            _ => Err(Error::protocol("internal: simple query gave another response")),
        },
    }
}

/// Prepares a named statement; its parameter types come from the server
/// (or from `types`, where given).
pub fn prepare<'a>(sql: &'a str, types: &'a [Type]) -> Single<'a, Statement> {
    Single {
        request: Some(Box::new(move |c: &mut Connection, now| {
            c.submit(Request::prepare(sql, types), now)
        })),
        ticket: None,
        convert: |r| match r {
            Response::Prepared(s) => Ok(s),
            _ => Err(Error::protocol("internal: prepare gave another response")),
        },
    }
}

/// Executes a prepared statement.
pub fn execute<'a>(stmt: &'a Statement, params: &'a [Param<'a>], deadline: Option<Instant>) -> Single<'a, QueryResult> {
    Single {
        request: Some(Box::new(move |c: &mut Connection, now| {
            c.submit(Request::execute(stmt, params).deadline(deadline), now)
        })),
        ticket: None,
        convert: |r| expect_rows(Ok(r)),
    }
}

// ---- pipelines ----

/// Runs independent operations together: every request they can submit goes
/// out in one batch with one `Sync`, so the whole pipeline costs one round
/// trip. The output is the tuple (or `Vec`) of their outputs, in order.
///
/// A batch is one sync group, which the server runs as one implicit
/// transaction: if one statement fails, it fails, the later ones are
/// skipped ([`Error::Skipped`]), the earlier ones of the group are rolled
/// back, and the pipeline returns the first error. The connection stays
/// usable.
///
/// ```
/// use duet_core::ops::{pipeline, query};
/// let (a, b): ([duet_core::Param; 1], [duet_core::Param; 1]) = ([&1i32], [&2i32]);
/// let both = pipeline((query("SELECT $1", &a).one(), query("SELECT $1", &b).one()));
/// # let _ = both;
/// ```
pub fn pipeline<P: PipelineOps>(ops: P) -> Pipeline<P> {
    Pipeline { state: P::start(ops) }
}

/// See [`pipeline`].
pub struct Pipeline<P: PipelineOps> {
    state: P::State,
}

/// Implemented for tuples of operations (up to 10) and for `Vec`s of one
/// operation type.
pub trait PipelineOps {
    type State;
    type Output;
    fn start(self) -> Self::State;
    /// Polls every unfinished child once: whether all are finished, and
    /// whether one was refused in the client during this poll.
    fn poll_all(state: &mut Self::State, conn: &mut Connection, now: Instant) -> (bool, bool);
    fn submitted_all(state: &Self::State) -> bool;
    fn finish(state: &mut Self::State) -> Result<Self::Output, Error>;
    fn abandon(state: &mut Self::State, conn: &mut Connection);
    /// A child was refused: the unfinished ones are given up (a sibling
    /// transaction's unsent COMMIT taken back) and marked skipped.
    fn give_up(state: &mut Self::State, conn: &mut Connection);
}

/// One child of a pipeline: the operation and, once finished, its result.
pub struct Slot<O: Operation> {
    op: O,
    result: Option<Result<O::Output, Error>>,
}

impl<O: Operation> Slot<O> {
    fn new(op: O) -> Self {
        Slot { op, result: None }
    }
    /// Polls the child if unfinished: (finished, refused in the client now).
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> (bool, bool) {
        let mut refused = false;
        if self.result.is_none() {
            if let Step::Ready(r) = self.op.poll(conn, now) {
                refused = matches!(r, Err(Error::Misuse(_) | Error::Encode(_) | Error::Invalid(_)));
                self.result = Some(r);
            }
        }
        (self.result.is_some(), refused)
    }
    fn submitted_all(&self) -> bool {
        match &self.result {
            Some(r) => r.is_ok(),
            None => self.op.submitted_all(),
        }
    }
    fn abandon(&mut self, conn: &mut Connection) {
        if self.result.is_none() {
            self.op.abandon(conn);
        }
    }
    fn give_up(&mut self, conn: &mut Connection) {
        if self.result.is_none() {
            self.op.abandon(conn);
            self.result = Some(Err(Error::Skipped));
        }
    }
    fn take(&mut self) -> Result<O::Output, Error> {
        self.result
            .take()
            .unwrap_or_else(|| Err(Error::misuse("pipeline result taken twice")))
    }
    /// This child's own failure, the one to report.
    fn first_error(&self) -> Option<&Error> {
        match &self.result {
            Some(Err(e)) if !is_consequence(e) => Some(e),
            _ => None,
        }
    }
    /// A failure caused by another child's (see [`is_consequence`]).
    fn skipped(&self) -> Option<&Error> {
        match &self.result {
            Some(Err(e)) if is_consequence(e) => Some(e),
            _ => None,
        }
    }
}

/// An error that only follows from an earlier failure: a statement the
/// server skipped in the failed sync group, or one a child sent after the
/// group (an `after_save` hook's insert, say) into a transaction a sibling's
/// failure had already aborted (25P02). Children are polled in order, so
/// such a follow-up can fail before the sibling that caused it is looked at:
/// reporting it would hide the cause (a unique violation behind "current
/// transaction is aborted").
fn is_consequence(e: &Error) -> bool {
    matches!(e, Error::Skipped | Error::RolledBack) || e.code() == Some(sqlstate::IN_FAILED_SQL_TRANSACTION)
}

impl<P: PipelineOps> Operation for Pipeline<P> {
    type Output = P::Output;
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<P::Output> {
        conn.begin_batch();
        let (mut all, refused) = P::poll_all(&mut self.state, conn, now);
        if refused {
            // All or nothing: what the siblings queued this round must not
            // take effect (the poison voids the group on the server), and
            // those still running are given up.
            conn.poison_batch();
            P::give_up(&mut self.state, conn);
            all = true;
        }
        conn.end_batch();
        if all {
            Step::Ready(P::finish(&mut self.state))
        } else {
            Step::Pending
        }
    }
    fn submitted_all(&self) -> bool {
        P::submitted_all(&self.state)
    }
    fn abandon(&mut self, conn: &mut Connection) {
        P::abandon(&mut self.state, conn)
    }
}

macro_rules! tuple_pipeline {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Operation),+> PipelineOps for ($($name,)+) {
            type State = ($(Slot<$name>,)+);
            type Output = ($($name::Output,)+);
            fn start(self) -> Self::State {
                ($(Slot::new(self.$idx),)+)
            }
            fn poll_all(s: &mut Self::State, conn: &mut Connection, now: Instant) -> (bool, bool) {
                let (mut all, mut refused) = (true, false);
                $(
                    let (done, r) = s.$idx.poll(conn, now);
                    all &= done;
                    refused |= r;
                )+
                (all, refused)
            }
            fn submitted_all(s: &Self::State) -> bool {
                true $( && s.$idx.submitted_all() )+
            }
            fn finish(s: &mut Self::State) -> Result<Self::Output, Error> {
                // Report the statement that failed, not the ones it skipped.
                $( if let Some(e) = s.$idx.first_error() { return Err(e.clone()); } )+
                $( if let Some(e) = s.$idx.skipped() { return Err(e.clone()); } )+
                Ok(($(s.$idx.take()?,)+))
            }
            fn abandon(s: &mut Self::State, conn: &mut Connection) {
                $( s.$idx.abandon(conn); )+
            }
            fn give_up(s: &mut Self::State, conn: &mut Connection) {
                $( s.$idx.give_up(conn); )+
            }
        }
    };
}

tuple_pipeline!(A 0);
tuple_pipeline!(A 0, B 1);
tuple_pipeline!(A 0, B 1, C 2);
tuple_pipeline!(A 0, B 1, C 2, D 3);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_pipeline!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);

impl<O: Operation> PipelineOps for Vec<O> {
    type State = Vec<Slot<O>>;
    type Output = Vec<O::Output>;
    fn start(self) -> Self::State {
        self.into_iter().map(Slot::new).collect()
    }
    fn poll_all(s: &mut Self::State, conn: &mut Connection, now: Instant) -> (bool, bool) {
        let (mut all, mut refused) = (true, false);
        for slot in s.iter_mut() {
            let (done, r) = slot.poll(conn, now);
            all &= done;
            refused |= r;
        }
        (all, refused)
    }
    fn submitted_all(s: &Self::State) -> bool {
        s.iter().all(|x| x.submitted_all())
    }
    fn finish(s: &mut Self::State) -> Result<Self::Output, Error> {
        if let Some(e) = s.iter().find_map(|x| x.first_error()) {
            return Err(e.clone());
        }
        if let Some(e) = s.iter().find_map(|x| x.skipped()) {
            return Err(e.clone());
        }
        s.iter_mut().map(|x| x.take()).collect()
    }
    fn abandon(s: &mut Self::State, conn: &mut Connection) {
        for x in s.iter_mut() {
            x.abandon(conn);
        }
    }
    fn give_up(s: &mut Self::State, conn: &mut Connection) {
        for x in s.iter_mut() {
            x.give_up(conn);
        }
    }
}

// ---- driving ----

/// Something that owns a [`Connection`]: a driver's `Client`.
pub trait HasConnection {
    fn connection_mut(&mut self) -> &mut Connection;
}

/// An operation a driver is running. Dropped before it finishes (a dropped
/// future, a panic unwinding through the loop, an I/O error), it abandons
/// the operation, so the connection discards its responses, rolls back a
/// transaction it opened and stays usable.
pub struct Running<'c, C: HasConnection, O: Operation> {
    /// The client, for the driver's I/O between polls.
    pub client: &'c mut C,
    op: Option<O>,
}

impl<'c, C: HasConnection, O: Operation> Running<'c, C, O> {
    pub fn new(client: &'c mut C, op: O) -> Self {
        Running { client, op: Some(op) }
    }

    pub fn poll(&mut self, now: Instant) -> Step<O::Output> {
        let Some(op) = self.op.as_mut() else {
            return Step::Ready(Err(Error::misuse("operation polled after it completed")));
        };
        let step = op.poll(self.client.connection_mut(), now);
        if let Step::Ready(_) = step {
            self.op = None;
        }
        step
    }

    /// What the driver does next: the whole decision of a driver's loop,
    /// so both drivers make it the same way. `io_error` is the error the
    /// driver's last I/O step returned: the core has already closed the
    /// connection with it, and the operation is polled once more so that
    /// it sees the closed connection (a transaction whose COMMIT left must
    /// find out what happened) before the error is returned.
    pub fn next(&mut self, now: Instant, io_error: &mut Option<Error>) -> Next<O::Output> {
        if let Step::Ready(out) = self.poll(now) {
            return Next::Done(out);
        }
        if let Some(xid) = self.client.connection_mut().poll_outcome_query() {
            return Next::LookUpOutcome(xid);
        }
        match io_error.take() {
            Some(e) => Next::Done(Err(e)),
            None => Next::Io,
        }
    }
}

/// See [`Running::next`].
pub enum Next<T> {
    /// The operation finished.
    Done(Result<T, Error>),
    /// Move bytes: write what the connection has to send, read what it
    /// waits for, sleep until its next deadline.
    Io,
    /// Run [`tx_outcome`] for this transaction id on a new connection to
    /// the same server, within [`crate::Config::side_limit`], and hand the
    /// answer to [`Connection::handle_outcome`].
    LookUpOutcome(i64),
}

impl<C: HasConnection, O: Operation> Drop for Running<'_, C, O> {
    fn drop(&mut self) {
        if let Some(mut op) = self.op.take() {
            let conn = self.client.connection_mut();
            // A panic may have unwound out of a batch the operation opened.
            conn.close_batches();
            op.abandon(conn);
        }
    }
}

mod transaction;
pub use transaction::*;
