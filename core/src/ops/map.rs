//! [`Operation::map`]: an operation whose output is converted.

use std::time::Instant;

use super::{Operation, Step};
use crate::{Connection, Error};

/// See [`Operation::map`].
pub struct Map<O, F> {
    pub(super) op: O,
    pub(super) f: F,
    /// `f` can fail: a transaction around this must not commit before it ran.
    pub(super) checks: bool,
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
