//! [`Collect`]: a [`Query`] whose rows are decoded into values as they
//! arrive, not after the last one: the client decodes while the server is
//! still sending, and each row's bytes are released once decoded.

use std::time::Instant;

use super::query::QueryState;
use super::{Operation, Query, Step};
use crate::row::Row;
use crate::{Connection, Error};

/// Makes one value of a row.
pub type Decode<T> = fn(&Row) -> Result<T, Error>;

/// See [`Query::collect`].
pub struct Collect<'a, T> {
    pub(super) query: Query<'a>,
    pub(super) decode: Decode<T>,
    pub(super) out: Vec<T>,
    pub(super) batch: Vec<Row>,
    /// The first row that failed to decode: the statement runs on, the
    /// rows after it are dropped, and this is the outcome.
    pub(super) failed: Option<Error>,
    /// The run the values in `out` came from: a retried statement (a stale
    /// cached one) starts them again.
    pub(super) run: Option<crate::Ticket>,
}

impl<T> Collect<'_, T> {
    fn feed(&mut self) {
        if self.failed.is_some() {
            self.batch.clear();
            return;
        }
        self.out.reserve(self.batch.len());
        for row in self.batch.drain(..) {
            match (self.decode)(&row) {
                Ok(v) => self.out.push(v),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        self.batch.clear();
    }
}

impl<T> Operation for Collect<'_, T> {
    type Output = Vec<T>;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<Vec<T>> {
        if let QueryState::Running { ticket, .. } = &self.query.state {
            if self.run != Some(*ticket) {
                self.run = Some(*ticket);
                self.out.clear();
                self.failed = None;
            }
            conn.take_rows(*ticket, &mut self.batch);
            self.feed();
        }
        match self.query.poll(conn, now) {
            Step::Pending => Step::Pending,
            Step::Ready(Err(e)) => Step::Ready(Err(e)),
            Step::Ready(Ok(mut q)) => {
                self.batch.append(&mut q.rows);
                self.feed();
                match self.failed.take() {
                    Some(e) => Step::Ready(Err(e)),
                    None => Step::Ready(Ok(std::mem::take(&mut self.out))),
                }
            }
        }
    }

    /// Never: a row still to come may fail to decode.
    fn submitted_all(&self) -> bool {
        false
    }

    fn abandon(&mut self, conn: &mut Connection) {
        self.query.abandon(conn)
    }
}
