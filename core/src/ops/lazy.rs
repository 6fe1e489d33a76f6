//! [`lazy`] and [`Deferred`]: operations built on their first poll.

use std::time::Instant;

use super::{Operation, Step};
use crate::{Connection, Error};

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
