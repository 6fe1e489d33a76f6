//! What operators see, through `tracing`: a span for each statement a
//! connection sends, and an event for each thing a pool decides.
//!
//! Targets and fields (all at `DEBUG` unless said otherwise):
//! - `duet::statement`, span `statement`: `statement` (the SQL text as
//!   sent — parameters travel apart and are never recorded), `host`,
//!   `port`, then on completion `rows` (from the command tag: rows returned
//!   or affected), `sqlstate` (a server error) or `error` (any other
//!   failure), and `duration_us` (submission to completion). The span
//!   opens when the statement is submitted and closes when its answer is
//!   in, so its own lifetime is the duration too.
//! - `duet::pool`, events: `connection lent` (`wait_us`), `acquire failed`
//!   (WARN: `wait_us`, `error`), `connection opened` (`size`), `connect
//!   failed` (WARN: `error`, `backoff_ms`), `connection closed` (`reason`:
//!   `idle_timeout` or `max_lifetime`), `connection discarded` (INFO:
//!   `reason`).
//!
//! The core reads no clock: durations are measured between the times the
//! driver handed in. A callsite that no subscriber listens to costs a
//! check of the level filter; nothing is built or copied.

use std::time::{Duration, Instant};

use tracing::field::{display, Empty};

use crate::config::{Config, Host};
use crate::connection::{QueryResult, Response};
use crate::Error;

/// A statement's span while its answer is awaited; only exists while a
/// subscriber listens (see [`statement`]).
pub(crate) struct StatementSpan {
    span: tracing::Span,
    started: Instant,
}

/// The span of a statement submitted at `now`; `None` when nobody listens.
pub(crate) fn statement(sql: &str, config: &Config, now: Instant) -> Option<StatementSpan> {
    let span = tracing::debug_span!(
        target: "duet::statement",
        "statement",
        statement = sql,
        host = Empty,
        port = Empty,
        rows = Empty,
        sqlstate = Empty,
        error = Empty,
        duration_us = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    // A session's configuration names the one endpoint it reached.
    match config.host.first() {
        Some(Host::Tcp(h) | Host::Unix(h)) => span.record("host", h.as_str()),
        None => &span,
    };
    if let Some(p) = config.port.first() {
        span.record("port", p);
    }
    Some(StatementSpan { span, started: now })
}

impl StatementSpan {
    /// Records how the statement ended; the span closes when `self` drops.
    pub(crate) fn finish(self, result: &Result<Response, Error>, now: Instant) {
        let span = &self.span;
        match result {
            Ok(Response::Rows(QueryResult { tag, .. }) | Response::CopyOut { tag, .. }) => {
                // `SELECT 3`, `INSERT 0 1`, `COPY 5`; `BEGIN` counts nothing.
                let count = tag.as_deref().and_then(|t| t.rsplit(' ').next()?.parse::<u64>().ok());
                if let Some(n) = count {
                    span.record("rows", n);
                }
            }
            Ok(Response::Simple(messages)) => {
                let rows = messages
                    .iter()
                    .filter(|m| matches!(m, crate::SimpleMessage::Row(_)))
                    .count();
                span.record("rows", rows);
            }
            Ok(Response::Prepared(_) | Response::Portal(_)) => {}
            Err(Error::Db(e)) => {
                span.record("sqlstate", e.code.as_str());
            }
            Err(e) => {
                span.record("error", display(e));
            }
        }
        span.record("duration_us", micros(now.saturating_duration_since(self.started)));
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// ---- pool events ----

pub(crate) fn lent(waited: Duration) {
    tracing::debug!(target: "duet::pool", wait_us = micros(waited), "connection lent");
}

pub(crate) fn acquire_failed(waited: Duration, error: &Error) {
    tracing::warn!(target: "duet::pool", wait_us = micros(waited), error = %error, "acquire failed");
}

pub(crate) fn opened(size: usize) {
    tracing::debug!(target: "duet::pool", size, "connection opened");
}

pub(crate) fn connect_failed(error: &Error, backoff: Duration) {
    tracing::warn!(target: "duet::pool", error = %error, backoff_ms = backoff.as_millis() as u64, "connect failed");
}

pub(crate) fn closed(reason: &'static str) {
    tracing::debug!(target: "duet::pool", reason, "connection closed");
}

pub(crate) fn discarded(reason: &dyn std::fmt::Display) {
    tracing::info!(target: "duet::pool", reason = %reason, "connection discarded");
}
