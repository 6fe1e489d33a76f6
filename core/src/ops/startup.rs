//! [`Startup`]: waiting for the session to be ready.

use std::time::Instant;

use super::{Operation, Step};
use crate::Connection;

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
