//! [`Query`]: one extended-protocol statement with bound parameters, with
//! parameter-type inference and the retry of a stale cached statement.

use std::borrow::Cow;
use std::time::Instant;

use super::{Collect, Decode, ForEach, Map, Operation, Step};
use crate::connection::{QueryResult, Request, Response, Statement, Ticket, TransactionStatus};
use crate::error::sqlstate;
use crate::orm::Value;
use crate::params::{self, Param, ParamSource};
use crate::row::{maybe_learnt, FromRow, Row};
use crate::{Connection, Error};

pub(super) fn expect_rows(r: Result<Response, Error>) -> Result<QueryResult, Error> {
    match r? {
        Response::Rows(q) => Ok(q),
        _ => Err(Error::protocol("internal: a statement produced a non-row response")),
    }
}

/// Turns a statement's result into what the caller asked for.
pub type Convert<T> = fn(QueryResult) -> Result<T, Error>;

pub(super) enum QueryState {
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
    pub(super) state: QueryState,
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

    /// All rows, each made into a `T` (see [`FromRow`]: a derive by
    /// column name, a tuple by position) as it arrives.
    pub fn rows_as<T: FromRow>(self) -> Collect<'a, T> {
        self.collect(T::from_row)
    }

    /// All rows, each made into a `T` by `decode` as it arrives rather than
    /// after the last one: the client decodes while the server is still
    /// sending. A row that fails to decode fails the operation (the rest
    /// are dropped as they come).
    pub fn collect<T>(self, decode: Decode<T>) -> Collect<'a, T> {
        Collect {
            query: self,
            decode,
            out: Vec::new(),
            batch: Vec::new(),
            failed: None,
            run: None,
        }
    }

    /// Exactly one row, made into a `T`.
    pub fn one_as<T: FromRow>(self) -> Map<Self, Convert<T>> {
        self.map(
            (|r| match r.rows.len() {
                0 => Err(Error::NoRows),
                1 => T::from_row(&r.rows[0]),
                n => Err(Error::TooManyRows(n)),
            }) as Convert<T>,
        )
    }

    /// At most one row, made into a `T`.
    pub fn opt_as<T: FromRow>(self) -> Map<Self, Convert<Option<T>>> {
        self.map(
            (|r| match r.rows.len() {
                0 => Ok(None),
                1 => T::from_row(&r.rows[0]).map(Some),
                n => Err(Error::TooManyRows(n)),
            }) as Convert<Option<T>>,
        )
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
        let learned = conn.learned_types();
        match self.params.with(|p| params::encode_inferred(p, hint, learned))? {
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
                        // A value refused by a type the session had learnt
                        // (an enum given a label since): the types are
                        // forgotten by the failed submit; described again,
                        // they are looked up afresh. Once.
                        Err(Error::Encode(_)) if !self.retried && stmt.params().iter().any(maybe_learnt) => {
                            self.retried = true;
                            self.state = QueryState::Start;
                            continue;
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
                        ) || e.dropped_type().is_some();
                        if let Some(oid) = e.dropped_type() {
                            // Learnt before it was dropped: looked up again
                            // when next met.
                            conn.forget_type(oid);
                        }
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
