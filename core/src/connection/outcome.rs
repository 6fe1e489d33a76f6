//! Commit truth: when a connection is lost before a COMMIT's answer, the
//! transaction id (learnt by the probe sent behind its first statement)
//! is looked up on a new connection; this is the plumbing between the
//! operation that needs the answer and the driver that fetches it.

use super::Connection;
use crate::Error;

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
}
