//! [`Single`]: one request whose result is taken as is: [`simple_query`],
//! [`prepare`] and [`execute`].

use std::time::Instant;

use postgres_types::Type;

use super::query::expect_rows;
use super::{Operation, Step};
use crate::connection::{QueryResult, Request, Response, Statement, Ticket};
use crate::params::Param;
use crate::row::SimpleMessage;
use crate::{Connection, Error};

type Submit<'a> = Box<dyn FnOnce(&mut Connection, Instant) -> Result<Ticket, Error> + Send + 'a>;

/// A request whose result is taken as is: simple queries, prepares and
/// executions of prepared statements.
pub struct Single<'a, T> {
    pub(super) request: Option<Submit<'a>>,
    pub(super) ticket: Option<Ticket>,
    pub(super) convert: fn(Response) -> Result<T, Error>,
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
/// Refused inside a [`pipeline`](fn@super::pipeline) or [`atomic`](super::atomic) batch: a simple query is a
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

/// [`simple_query`] of a text the operation owns.
pub(crate) fn simple_query_owned(sql: String) -> Single<'static, Vec<SimpleMessage>> {
    Single {
        request: Some(Box::new(move |c: &mut Connection, now| {
            if c.in_batch() {
                return Err(Error::misuse(
                    "a simple-protocol query cannot join a pipeline or atomic batch",
                ));
            }
            c.submit(Request::simple(&sql), now)
        })),
        ticket: None,
        convert: |r| match r {
            Response::Simple(m) => Ok(m),
            _ => Err(Error::protocol("internal: simple query gave another response")),
        },
    }
}

/// [`prepare`] of a statement text the operation owns.
pub(crate) fn prepare_owned(sql: String) -> Single<'static, Statement> {
    Single {
        request: Some(Box::new(move |c: &mut Connection, now| {
            c.submit(Request::prepare(&sql, &[]), now)
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
