//! LISTEN/NOTIFY as a stream, written once for both drivers' `Listener`:
//! which channels are listened to (and the statement that subscribes them
//! again on a new connection), what was heard, and what may have been
//! missed. A driver connects, waits for input and hands its connection in.
//!
//! Notifications are not queued anywhere if nobody listens: those sent
//! while the connection was down are gone, and those that overflowed the
//! connection's event buffer (`event_capacity`, 1,024 by default) were
//! dropped, oldest first. Either is reported in order, as
//! [`Heard::Missed`], so an application rebuilding state from
//! notifications knows to reload it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Connection, Event};

/// One notification (`NOTIFY channel, 'payload'` or `pg_notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notifying session's backend process id.
    pub process_id: i32,
    pub channel: String,
    pub payload: String,
}

/// What a listener hears next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Notification(Notification),
    /// Notifications may have been lost here.
    Missed(Missed),
}

/// Why notifications may have been lost (see [`Heard::Missed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Missed {
    /// Notifications dropped, oldest first, because more events arrived
    /// than the connection's event buffer holds while nobody took them.
    pub dropped: u64,
    /// The connection was lost and a new one subscribed again: whatever was
    /// sent in between is gone (how much cannot be known).
    pub reconnected: bool,
}

/// Back-off between attempts to connect again: doubling from the first,
/// up to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The listener's state, apart from the connection.
#[derive(Debug, Default)]
pub struct Listen {
    channels: Vec<String>,
    /// Heard on a connection that was lost, not yet taken, then the gap.
    pending: VecDeque<Heard>,
    /// The connection's dropped-event count already reported.
    dropped_seen: u64,
    /// Failed connects in a row, and when the next may be tried.
    failures: u32,
    retry_at: Option<Instant>,
}

/// `LISTEN "channel"` with the name quoted as an identifier (any text, case
/// kept). A NUL cannot be in a name: refused.
fn quoted(verb: &str, channel: &str) -> Result<String, crate::Error> {
    if channel.contains('\0') {
        return Err(crate::Error::invalid("a channel name cannot hold a NUL byte"));
    }
    Ok(format!("{verb} \"{}\"", channel.replace('"', "\"\"")))
}

impl Listen {
    pub fn new() -> Listen {
        Listen::default()
    }

    /// The statement that starts listening to `channel`, which is
    /// remembered for new connections.
    pub fn listen(&mut self, channel: &str) -> Result<String, crate::Error> {
        let sql = quoted("LISTEN", channel)?;
        if !self.channels.iter().any(|c| c == channel) {
            self.channels.push(channel.to_string());
        }
        Ok(sql)
    }

    /// The statement that stops listening to `channel`.
    pub fn unlisten(&mut self, channel: &str) -> Result<String, crate::Error> {
        let sql = quoted("UNLISTEN", channel)?;
        self.channels.retain(|c| c != channel);
        Ok(sql)
    }

    /// The channels listened to.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// What a new connection runs to listen again (`None`: no channel).
    pub fn subscribe_all(&self) -> Option<String> {
        if self.channels.is_empty() {
            return None;
        }
        let all: Vec<String> = self.channels.iter().filter_map(|c| quoted("LISTEN", c).ok()).collect();
        Some(all.join("; "))
    }

    /// What was heard on a connection since lost, then the gap (see
    /// [`Listen::lost`]), before anything a new connection hears.
    pub fn take_pending(&mut self) -> Option<Heard> {
        self.pending.pop_front()
    }

    /// The next thing heard on `conn`, if any has arrived: a gap first when
    /// notifications were dropped before the ones still buffered. Notices
    /// and parameter changes on a listening connection are passed over.
    pub fn next(&mut self, conn: &mut Connection) -> Option<Heard> {
        if let Some(h) = self.pending.pop_front() {
            return Some(h);
        }
        self.heard(conn)
    }

    /// What `conn` heard, not counting what is pending.
    fn heard(&mut self, conn: &mut Connection) -> Option<Heard> {
        let dropped = conn.notifications_dropped();
        if dropped > self.dropped_seen {
            let n = dropped - self.dropped_seen;
            self.dropped_seen = dropped;
            return Some(Heard::Missed(Missed {
                dropped: n,
                reconnected: false,
            }));
        }
        while let Some(ev) = conn.poll_event() {
            if let Event::Notification {
                process_id,
                channel,
                payload,
            } = ev
            {
                return Some(Heard::Notification(Notification {
                    process_id,
                    channel,
                    payload,
                }));
            }
        }
        None
    }

    /// `conn` was lost: what it had heard is kept for [`Listen::next`],
    /// then a gap, reported once a new connection listens again.
    pub fn lost(&mut self, conn: &mut Connection) {
        while let Some(h) = self.heard(conn) {
            self.pending.push_back(h);
        }
    }

    /// A new connection listens again: the gap becomes visible.
    pub fn reconnected(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.dropped_seen = 0;
        self.pending.push_back(Heard::Missed(Missed {
            dropped: 0,
            reconnected: true,
        }));
    }

    /// Connecting again failed at `now`: the next attempt waits.
    pub fn connect_failed(&mut self, now: Instant) {
        let wait = BACKOFF.0.saturating_mul(1u32 << self.failures.min(16)).min(BACKOFF.1);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.checked_add(wait);
    }

    /// When the next attempt to connect may be made (`None`: now).
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Before connecting again, a caller waiting no later than `until`
    /// sleeps until the returned instant (if any), then connects — unless
    /// `false` says `until` comes first: it then has nothing to report.
    pub fn before_connect(&self, until: Option<Instant>) -> (Option<Instant>, bool) {
        match (self.retry_at, until) {
            (Some(at), Some(u)) if u < at => (Some(u), false),
            (at, _) => (at, true),
        }
    }
}
