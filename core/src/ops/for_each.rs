//! [`ForEach`]: a [`Query`] whose rows are handed to a
//! callback as they arrive, so memory stays bounded.

use std::time::Instant;

use super::query::QueryState;
use super::{Operation, Query, Step};
use crate::row::Row;
use crate::{Connection, Error};

/// See [`Query::for_each`].
pub struct ForEach<'a, F> {
    pub(super) query: Query<'a>,
    pub(super) f: F,
    pub(super) rows: u64,
    pub(super) batch: Vec<Row>,
    /// The callback's error: the statement runs on, its rows are dropped.
    pub(super) failed: Option<Error>,
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
