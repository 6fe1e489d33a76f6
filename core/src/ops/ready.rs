//! [`ready`]: an operation that is finished before it starts.

use std::time::Instant;

use super::{Operation, Step};
use crate::{Connection, Error};

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
