//! Layer 2: operations, any unit of database work, written once and pumped
//! by either driver. An operation submits every request it can before it
//! waits, so composing operations ([`pipeline`](fn@pipeline), [`atomic`])
//! composes their round trips too.

use std::time::Instant;

use crate::{Connection, Error};

mod collect;
mod for_each;
mod lazy;
mod map;
mod pipeline;
mod portal;
mod query;
mod ready;
mod single;
mod startup;
mod then;
mod transaction;

pub use collect::{Collect, Decode};
pub use for_each::ForEach;
pub use lazy::{lazy, Deferred, Lazy};
pub use map::Map;
use pipeline::is_consequence;
pub use pipeline::{pipeline, Pipeline, PipelineOps, Slot};
pub use portal::{fetch, portal, Fetched};
pub use query::{query, Convert, Query};
pub use ready::{ready, Ready};
pub use single::{execute, prepare, simple_query, Single};
pub(crate) use single::{prepare_owned, simple_query_owned};
pub use startup::{startup, Startup};
pub use then::{then, then_result, Then};
pub use transaction::*;

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

/// An operation behind a box, when branches build different operations.
pub type BoxOp<'a, T> = Box<dyn Operation<Output = T> + Send + 'a>;

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
        let conn = self.client.connection_mut();
        conn.observe_time(now);
        let step = op.poll(conn, now);
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
